/**
 * Tests for the hub's FIFO (`_queue.ts`). Most use an injected clock and a
 * fake `setTimeout` that records timers instead of starting them, so expiry
 * is checked without waiting; a few run on real timers with short timeouts.
 */

import assert from "node:assert/strict";
import { PriorityQueue, type QueueNode, WaitQueue } from "../_queue.ts";

interface FakeTimer {
  id: number;
  delay: number;
  fn: () => void;
}

/**
 * Replaces the global `setTimeout`/`clearTimeout` with fakes that record
 * timers; `fire()` runs the one live timer. Restores them on dispose.
 */
function fakeTimers() {
  const realSet = globalThis.setTimeout;
  const realClear = globalThis.clearTimeout;
  const live = new Map<number, FakeTimer>();
  const created: FakeTimer[] = [];
  let nextId = 1;
  globalThis.setTimeout = ((fn: () => void, delay = 0) => {
    const t = { id: nextId++, delay, fn };
    live.set(t.id, t);
    created.push(t);
    return t.id;
  }) as unknown as typeof setTimeout;
  globalThis.clearTimeout = ((id?: number) => {
    if (id !== undefined) live.delete(id);
  }) as typeof clearTimeout;
  return {
    live,
    created,
    /** The delay of the single live timer (asserts there is exactly one). */
    only(): FakeTimer {
      assert.equal(live.size, 1, `expected one live timer, have ${live.size}`);
      return [...live.values()][0];
    },
    /** Runs the single live timer. */
    fire(): void {
      const t = this.only();
      live.delete(t.id);
      t.fn();
    },
    [Symbol.dispose](): void {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
    },
  };
}

function fixture(timeout: number) {
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q = new WaitQueue<string>({
    timeout,
    onTimeout: (v) => expired.push(v),
    now: () => clock.now,
  });
  return { clock, expired, q };
}

function values(q: WaitQueue<string>): string[] {
  const out: string[] = [];
  for (let n = q.head; n !== null && out.length <= q.size; n = n.next) {
    out.push(n.value);
  }
  return out;
}

/** Checks that prev/next links agree both ways and size matches. */
function assertLinks(q: WaitQueue<string>): void {
  let prev: QueueNode<string> | null = null;
  let count = 0;
  for (let n = q.head; n !== null; n = n.next) {
    assert.equal(n.prev, prev, `prev link of ${n.value}`);
    assert.ok(n.queued, `${n.value} is marked queued`);
    prev = n;
    assert.ok(++count <= q.size, "list longer than size");
  }
  assert.equal(count, q.size);
}

// ---------------------------------------------------------------------------
// Order and removal (timeout 0: no timers at all)

Deno.test("WaitQueue shifts values in the order they were pushed", () => {
  using timers = fakeTimers();
  const { q } = fixture(0);
  for (const v of ["a", "b", "c", "d"]) q.push(v);
  assert.equal(q.size, 4);
  assert.equal(q.head?.value, "a");
  assertLinks(q);
  const out = [];
  for (let i = 0; i < 10 && q.size > 0; i++) out.push(q.shift()!.value);
  assert.deepEqual(out, ["a", "b", "c", "d"]);
  assert.equal(q.head, null);
  assert.equal(timers.created.length, 0, "timeout 0 never starts a timer");
});

Deno.test("WaitQueue shift on an empty queue returns null", () => {
  using _timers = fakeTimers();
  const { q } = fixture(100);
  assert.equal(q.shift(), null);
  q.push("a");
  q.shift();
  assert.equal(q.shift(), null);
  assert.equal(q.size, 0);
});

const deleteCases: [string, number, string[]][] = [
  ["head", 0, ["b", "c", "d"]],
  ["middle", 1, ["a", "c", "d"]],
  ["second to last", 2, ["a", "b", "d"]],
  ["tail", 3, ["a", "b", "c"]],
];

for (const [where, index, expected] of deleteCases) {
  Deno.test(`WaitQueue deletes the ${where} node and keeps the others in order`, () => {
    using _timers = fakeTimers();
    const { q } = fixture(0);
    const nodes = ["a", "b", "c", "d"].map((v) => q.push(v));
    assert.equal(q.delete(nodes[index]), true);
    assert.equal(nodes[index].queued, false);
    assert.equal(nodes[index].prev, null);
    assert.equal(nodes[index].next, null);
    assert.deepEqual(values(q), expected);
    assertLinks(q);
    assert.equal(q.delete(nodes[index]), false, "second delete is a no-op");
    assert.deepEqual(values(q), expected);
    // Appending after a tail delete links to the new tail.
    q.push("e");
    assert.deepEqual(values(q), [...expected, "e"]);
    assertLinks(q);
  });
}

Deno.test("WaitQueue delete of a shifted node returns false and changes nothing", () => {
  using _timers = fakeTimers();
  const { q } = fixture(0);
  const a = q.push("a");
  q.push("b");
  assert.equal(q.shift(), a);
  assert.equal(a.queued, false);
  assert.equal(q.delete(a), false);
  assert.deepEqual(values(q), ["b"]);
  assert.equal(q.size, 1);
});

Deno.test("WaitQueue deleting every node one by one leaves an empty, reusable queue", () => {
  using _timers = fakeTimers();
  const { q } = fixture(0);
  const nodes = ["a", "b", "c"].map((v) => q.push(v));
  for (const n of [nodes[1], nodes[2], nodes[0]]) q.delete(n);
  assert.equal(q.size, 0);
  assert.equal(q.head, null);
  q.push("x");
  q.push("y");
  assert.deepEqual(values(q), ["x", "y"]);
  assertLinks(q);
});

Deno.test("WaitQueue unshift puts a value at the head and keeps its original since", () => {
  using _timers = fakeTimers();
  const { q, clock } = fixture(0);
  const a = q.push("a");
  assert.equal(a.since, 1000);
  clock.now = 1500;
  q.push("b");
  q.shift();
  const again = q.unshift("a", a.since);
  assert.equal(again.since, 1000);
  assert.deepEqual(values(q), ["a", "b"]);
  assertLinks(q);
  // On an empty queue, unshift makes the only node.
  const { q: q2 } = fixture(0);
  const only = q2.unshift("z", 5);
  assert.equal(q2.head, only);
  assert.equal(only.since, 5);
  q2.push("y");
  assert.deepEqual(values(q2), ["z", "y"]);
  assertLinks(q2);
});

Deno.test("WaitQueue push takes an explicit since, defaulting to the clock", () => {
  using _timers = fakeTimers();
  const { q, clock } = fixture(0);
  clock.now = 1234;
  assert.equal(q.push("a").since, 1234);
  assert.equal(q.push("b", 42).since, 42);
});

Deno.test("WaitQueue drain returns every value oldest first and empties the queue", () => {
  using timers = fakeTimers();
  const { q } = fixture(100);
  const nodes = ["a", "b", "c"].map((v) => q.push(v));
  q.unshift("z", 0);
  assert.equal(timers.live.size, 1);
  assert.deepEqual(q.drain(), ["z", "a", "b", "c"]);
  assert.equal(q.size, 0);
  assert.equal(q.head, null);
  assert.ok(nodes.every((n) => !n.queued));
  assert.equal(timers.live.size, 0, "drain stops the timer");
  assert.deepEqual(q.drain(), []);
});

// ---------------------------------------------------------------------------
// Timer management

Deno.test("WaitQueue runs no timer while empty and one timer while anything waits", () => {
  using timers = fakeTimers();
  const { q } = fixture(100);
  assert.equal(timers.live.size, 0);
  const a = q.push("a");
  assert.equal(timers.only().delay, 100);
  const b = q.push("b");
  const c = q.push("c");
  assert.equal(timers.created.length, 1, "later pushes reuse the timer");
  q.delete(b);
  q.delete(a);
  assert.equal(timers.live.size, 1);
  q.delete(c);
  assert.equal(timers.live.size, 0, "removing the last value stops the timer");
  q.push("d");
  assert.equal(timers.live.size, 1);
  q.shift();
  assert.equal(timers.live.size, 0, "shifting the last value stops the timer");
});

Deno.test("WaitQueue arms its timer for the head's remaining wait", () => {
  using timers = fakeTimers();
  const { q, clock } = fixture(100);
  clock.now = 1030;
  q.push("a", 1000);
  assert.equal(timers.only().delay, 70);
  q.shift();
  q.push("b", 500); // already overdue
  assert.equal(timers.only().delay, 0);
  q.shift();
  q.push("c", 1029.4);
  assert.equal(timers.only().delay, 100, "fractional waits round up");
});

Deno.test("WaitQueue expires overdue values in order, once each, and re-arms for the next", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(100);
  q.push("a", 1000);
  q.push("b", 1010);
  q.push("c", 1010);
  q.push("d", 1060);
  clock.now = 1110;
  timers.fire();
  assert.deepEqual(expired, ["a", "b", "c"]);
  assert.deepEqual(values(q), ["d"]);
  assertLinks(q);
  assert.equal(timers.only().delay, 50);
  clock.now = 1160;
  timers.fire();
  assert.deepEqual(expired, ["a", "b", "c", "d"]);
  assert.equal(q.size, 0);
  assert.equal(timers.live.size, 0, "no timer once the queue is empty");
});

Deno.test("WaitQueue treats a value whose wait equals the timeout as expired", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(100);
  q.push("a", 1000);
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["a"]);
});

Deno.test("WaitQueue expires nothing when its timer fires early and re-arms for the rest", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(100);
  q.push("a", 1000);
  clock.now = 1099.5;
  timers.fire();
  assert.deepEqual(expired, []);
  assert.equal(q.size, 1);
  assert.equal(timers.only().delay, 1);
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["a"]);
});

Deno.test("WaitQueue re-arms for the new head after the old head was deleted", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(100);
  const a = q.push("a", 1000);
  q.push("b", 1050);
  q.delete(a);
  clock.now = 1100;
  timers.fire(); // a's deadline: b is not due yet
  assert.deepEqual(expired, []);
  assert.equal(timers.only().delay, 50);
  clock.now = 1150;
  timers.fire();
  assert.deepEqual(expired, ["b"]);
});

Deno.test("WaitQueue expires a value put back at the head on its original deadline", () => {
  // The hub takes "a" for a worker, the worker fails, and "a" goes back to
  // the head after "b" joined an empty queue: "a" must still time out
  // `timeout` ms after it first joined, not when "b" does.
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(100);
  const a = q.push("a", 1000);
  q.shift(); // queue empty: timer stopped
  assert.equal(timers.live.size, 0);
  clock.now = 1050;
  q.push("b", 1050); // timer for b: 100 ms from now
  q.unshift("a", a.since); // a is due in 50 ms
  assert.equal(timers.only().delay, 50);
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["a"]);
  assert.deepEqual(values(q), ["b"]);
  assert.equal(timers.only().delay, 50);
});

Deno.test("WaitQueue keeps one timer when onTimeout pushes a new value", () => {
  using timers = fakeTimers();
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q: WaitQueue<string> = new WaitQueue<string>({
    timeout: 100,
    onTimeout: (v) => {
      expired.push(v);
      if (v === "a") q.push("retry");
    },
    now: () => clock.now,
  });
  q.push("a");
  q.push("b");
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["a", "b"]);
  assert.deepEqual(values(q), ["retry"]);
  // The timer armed during the push may be early; it never fires "retry"
  // before its time and then re-arms for it.
  timers.fire();
  assert.deepEqual(expired, ["a", "b"]);
  assert.equal(timers.only().delay, 100);
  q.drain();
  assert.equal(timers.live.size, 0);
});

Deno.test("WaitQueue with timeout 0 never expires and never starts a timer", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fixture(0);
  q.push("a", 0);
  q.unshift("b", 0);
  clock.now = 1e12;
  q.push("c");
  assert.equal(timers.created.length, 0);
  assert.deepEqual(expired, []);
  assert.deepEqual(q.drain(), ["b", "a", "c"]);
});

// ---------------------------------------------------------------------------
// Real timers (short timeouts; the sanitizers catch a leaked timer)

Deno.test("WaitQueue expires values on a real timer with an injected clock", async () => {
  const clock = { now: 0 };
  const expired: string[] = [];
  const { promise: allExpired, resolve } = Promise.withResolvers<void>();
  const q = new WaitQueue<string>({
    timeout: 20,
    onTimeout: (v) => {
      expired.push(v);
      if (expired.length === 2) resolve();
    },
    now: () => clock.now,
  });
  q.push("a");
  q.push("b");
  q.push("c", 1_000_000); // far in the future on the injected clock
  clock.now = 1000; // a and b are overdue whenever the timer runs
  const guard = setTimeout(() => resolve(), 5000); // hang guard only
  await allExpired;
  clearTimeout(guard);
  assert.deepEqual(expired, ["a", "b"]);
  assert.deepEqual(values(q), ["c"]);
  assert.deepEqual(q.drain(), ["c"]); // stops the re-armed timer
});

Deno.test("WaitQueue expires values on real time by default", async () => {
  const expired: string[] = [];
  const { promise: allExpired, resolve } = Promise.withResolvers<void>();
  const q = new WaitQueue<string>({
    timeout: 20,
    onTimeout: (v) => {
      expired.push(v);
      if (expired.length === 2) resolve();
    },
  });
  q.push("a");
  q.push("b");
  const guard = setTimeout(() => resolve(), 5000); // hang guard only
  await allExpired;
  clearTimeout(guard);
  assert.deepEqual(expired, ["a", "b"]);
  assert.equal(q.size, 0);
});

Deno.test("WaitQueue never calls onTimeout for a value removed before its deadline", async () => {
  const expired: string[] = [];
  const q = new WaitQueue<string>({
    timeout: 20,
    onTimeout: (v) => expired.push(v),
  });
  const a = q.push("a");
  q.delete(a);
  q.push("b");
  q.shift();
  // Wait past the deadline; a leaked timer would also fail the sanitizer.
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(expired, []);
});

Deno.test("WaitQueue puts a value that joined earlier ahead of later ones, and expires it on time", () => {
  using timers = fakeTimers();
  const { clock, expired, q } = fixture(100);
  q.push("b", 1000);
  q.push("c", 1010);
  // "a" arrived at 990 but only now joins (its body took a while).
  clock.now = 1020;
  q.push("a", 990);
  assert.deepEqual(values(q), ["a", "b", "c"]);
  assertLinks(q);
  // The timer follows the new head: "a" expires 100 ms after 990.
  assert.equal(timers.only().delay, 70);
  clock.now = 1090;
  timers.fire();
  assert.deepEqual(expired, ["a"]);
  assert.deepEqual(values(q), ["b", "c"]);
  // In the middle too.
  q.push("bb", 1005);
  assert.deepEqual(values(q), ["b", "bb", "c"]);
  assertLinks(q);
});

Deno.test("WaitQueue puts a value back behind an older one that joined meanwhile, and expires both on time", () => {
  // The hub sends "r" (arrived 1010) to a worker; "s" (arrived 1000, its
  // small body read slowly) joins meanwhile; the worker declines "r", which
  // goes back. "s" must still expire 100 ms after 1000, not after "r" does.
  using timers = fakeTimers();
  const { clock, expired, q } = fixture(100);
  const r = q.push("r", 1010);
  q.shift();
  clock.now = 1020;
  q.push("s", 1000);
  clock.now = 1030;
  q.unshift("r", r.since);
  assert.deepEqual(values(q), ["s", "r"]);
  assertLinks(q);
  assert.equal(timers.only().delay, 80); // armed for "s" at 1020
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["s"]);
  assert.equal(timers.only().delay, 10);
  clock.now = 1110;
  timers.fire();
  assert.deepEqual(expired, ["s", "r"]);
  assert.equal(q.size, 0);
  // Ahead of a later value, and of one that joined at the same time.
  q.push("c", 1200);
  q.push("b", 1150);
  q.unshift("a", 1150);
  assert.deepEqual(values(q), ["a", "b", "c"]);
  assertLinks(q);
});

// ---------------------------------------------------------------------------
// Priority classes

function priorityFixture(timeout: number) {
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q = new PriorityQueue<string>({
    timeout,
    onTimeout: (v) => expired.push(v),
    now: () => clock.now,
  });
  const order = () => {
    const out: string[] = [];
    for (let n = q.shift(); n !== null; n = q.shift()) out.push(n.value);
    return out;
  };
  return { clock, expired, q, order };
}

Deno.test("PriorityQueue serves a higher class first and each class in order of arrival", () => {
  const { q, order } = priorityFixture(0);
  q.push("n1");
  q.push("l1", undefined, -5);
  q.push("h1", undefined, 10);
  q.push("n2", undefined, 0);
  q.push("h2", undefined, 10);
  q.push("m1", undefined, 3);
  q.push("l2", undefined, -5);
  assert.equal(q.size, 7);
  assert.equal(q.head?.value, "h1");
  assert.equal(q.head?.priority, 10);
  assert.deepEqual(order(), ["h1", "h2", "m1", "n1", "n2", "l1", "l2"]);
  assert.equal(q.size, 0);
  assert.equal(q.head, null);
  assert.equal(q.shift(), null);
});

Deno.test("PriorityQueue puts a value back at the head of its own class", () => {
  const { q, order } = priorityFixture(0);
  q.push("h1", 1000, 1);
  q.push("n1", 1001);
  const h2 = q.push("h2", 1002, 1);
  q.delete(h2);
  const n0 = q.shift()!; // h1
  assert.equal(n0.value, "h1");
  q.unshift("n0", 999, 0);
  q.unshift("h0", 998, 1);
  assert.deepEqual(order(), ["h0", "n0", "n1"]);
});

Deno.test("PriorityQueue delete takes a node out of its class only, once", () => {
  const { q, order } = priorityFixture(0);
  const a = q.push("a", undefined, 2);
  const b = q.push("b");
  const c = q.push("c", undefined, -2);
  assert.equal(q.delete(a), true);
  assert.equal(q.delete(a), false);
  assert.equal(q.size, 2);
  assert.equal(q.head, b);
  assert.equal(q.delete(c), true);
  assert.deepEqual(order(), ["b"]);
});

Deno.test("PriorityQueue knows the oldest wait over all classes, and drains highest first", () => {
  const { q, clock } = priorityFixture(0);
  assert.equal(q.oldestSince, null);
  q.push("n", 900);
  clock.now = 1100;
  q.push("h", undefined, 1);
  assert.equal(q.head?.value, "h");
  assert.equal(q.oldestSince, 900);
  q.push("l", 800, -1);
  assert.equal(q.oldestSince, 800);
  assert.deepEqual(q.drain(), ["h", "n", "l"]);
  assert.equal(q.size, 0);
  assert.equal(q.oldestSince, null);
});

Deno.test("PriorityQueue times out each class on its own timer, and drops emptied classes", () => {
  using timers = fakeTimers();
  const { q, clock, expired, order } = priorityFixture(100);
  q.push("n", 1000);
  q.push("h", 1050, 7);
  assert.equal(timers.live.size, 2, "one timer per class with something in it");
  clock.now = 1100;
  // The class-0 timer is the first one made.
  const first = timers.created[0];
  timers.live.delete(first.id);
  first.fn();
  assert.deepEqual(expired, ["n"]);
  assert.equal(q.size, 1);
  clock.now = 1150;
  timers.fire();
  assert.deepEqual(expired, ["n", "h"]);
  assert.equal(q.size, 0);
  assert.equal(timers.live.size, 0);
  // A class that emptied (by timeout) is made afresh, in its place.
  q.push("l", undefined, -1);
  q.push("h2", undefined, 7);
  q.push("n2");
  assert.deepEqual(order(), ["h2", "n2", "l"]);
});
