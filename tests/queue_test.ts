/**
 * Tests for the hub's FIFO (`_queue.ts`). Most use an injected clock and a
 * fake `setTimeout` that records timers instead of starting them, so expiry
 * is checked without waiting; a few run on real timers with short timeouts.
 */

import assert from "node:assert/strict";
import {
  FairQueue,
  PriorityQueue,
  type QueueNode,
  WaitQueue,
} from "../_queue.ts";
import { ShareLedger } from "../_share.ts";

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

function priorityFixture(
  timeout: number,
  step?: number,
  keyOf?: (v: string) => string,
) {
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q = new PriorityQueue<string>({
    timeout,
    onTimeout: (v) => expired.push(v),
    now: () => clock.now,
    step,
    keyOf,
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

Deno.test("PriorityQueue with a step: a class is worth step ms of waiting, so a lower class goes ahead of a higher one that came long enough after it", () => {
  const { q, order } = priorityFixture(0, 100);
  // Served by since - priority × 100: l1 900+200=1100, n1 1000, h1
  // 1150-100=1050, l2 1050+200=1250, n2 1120, h2 1400-100=1300, m1
  // 1290-300=990 (class 3).
  q.push("l1", 900, -2);
  q.push("n1", 1000);
  q.push("h1", 1150, 1);
  q.push("l2", 1050, -2);
  q.push("n2", 1120);
  q.push("h2", 1400, 1);
  q.push("m1", 1290, 3);
  const heads: string[] = [];
  const served: string[] = [];
  for (let h = q.head; h !== null; h = q.head) {
    heads.push(h.value);
    served.push(q.shift()!.value);
  }
  assert.deepEqual(served, ["m1", "n1", "h1", "l1", "n2", "l2", "h2"]);
  assert.deepEqual(heads, served, "head is what shift returns");
  assert.equal(q.size, 0);
  // A tie goes to the higher class; a value put back keeps its since.
  q.push("n3", 1100);
  q.push("h3", 1200, 1);
  assert.equal(q.head?.value, "h3");
  const h3 = q.shift()!;
  q.unshift("h3", h3.since, 1);
  q.push("l3", 1050, -1);
  assert.deepEqual(order(), ["h3", "n3", "l3"]);
  // Infinity is strict; 0 is first come, first served whatever the class.
  const fifo = priorityFixture(0, 0);
  fifo.q.push("h", 1001, 5);
  fifo.q.push("l", 1000, -5);
  assert.deepEqual(fifo.order(), ["l", "h"]);
  const strict = priorityFixture(0, Infinity);
  strict.q.push("l", 0, -5);
  strict.q.push("h", 1e9, 5);
  assert.deepEqual(strict.order(), ["h", "l"]);
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

// ---------------------------------------------------------------------------
// Fair queuing: keys in turn, each key first come first served

/** Values are "key.n": the key is what comes before the dot. */
const keyOf = (v: string) => v.slice(0, v.indexOf("."));

function fairFixture(timeout: number, ledger?: ShareLedger) {
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q = new FairQueue<string>({
    timeout,
    onTimeout: (v) => expired.push(v),
    now: () => clock.now,
    keyOf,
    ledger,
  });
  const order = () => {
    const out: string[] = [];
    for (let n = q.shift(); n !== null && out.length < 1000; n = q.shift()) {
      out.push(n.value);
    }
    return out;
  };
  return { clock, expired, q, order };
}

Deno.test("FairQueue serves its keys in turn, one value per turn, each key in order of arrival", () => {
  using timers = fakeTimers();
  const { q, order } = fairFixture(0);
  for (const v of ["a.1", "a.2", "a.3", "a.4", "b.1", "b.2", "c.1"]) q.push(v);
  assert.equal(q.size, 7);
  assert.equal(q.keys, 3);
  assert.equal(q.sizeOf("a"), 4);
  assert.equal(q.sizeOf("z"), 0);
  assert.deepEqual([...q.keyNames()], ["a", "b", "c"]);
  assert.equal(q.head?.value, "a.1");
  assert.deepEqual(order(), ["a.1", "b.1", "c.1", "a.2", "b.2", "a.3", "a.4"]);
  assert.equal(q.size, 0);
  assert.equal(q.keys, 0);
  assert.equal(q.head, null);
  assert.equal(q.shift(), null);
  assert.equal(timers.created.length, 0, "timeout 0 never starts a timer");
});

Deno.test("FairQueue: a key that arrives joins the rotation at its end", () => {
  const { q } = fairFixture(0);
  q.push("a.1");
  q.push("a.2");
  q.push("b.1");
  assert.equal(q.shift()?.value, "a.1"); // rotation now b, a
  q.push("c.1");
  q.push("a.3");
  const out = [];
  for (let n = q.shift(); n !== null; n = q.shift()) out.push(n.value);
  assert.deepEqual(out, ["b.1", "a.2", "c.1", "a.3"]);
});

Deno.test("FairQueue: a value put back goes to the head of its key, and that key serves next", () => {
  const { q, order } = fairFixture(0);
  q.push("a.1", 1000);
  q.push("a.2", 1001);
  q.push("b.1", 1002);
  q.push("b.2", 1003);
  q.push("c.1", 1004);
  const a1 = q.shift()!; // a.1: rotation b, c, a
  assert.equal(a1.value, "a.1");
  const b1 = q.shift()!; // b.1: rotation c, a, b
  assert.equal(b1.value, "b.1");
  // A retry of a.1: a serves next, a.1 ahead of a.2.
  q.unshift("a.1", a1.since);
  assert.equal(q.head?.value, "a.1");
  // A retry of b.1 after its key had emptied: the key comes back first.
  q.shift(); // a.1 again
  q.unshift("b.1", b1.since);
  assert.equal(q.head?.value, "b.1");
  assert.deepEqual(order(), ["b.1", "c.1", "a.2", "b.2"]);
  // A key that had left the rotation comes back at the front.
  q.push("d.1");
  q.push("e.1");
  q.unshift("f.1", 900);
  assert.deepEqual(order(), ["f.1", "d.1", "e.1"]);
});

Deno.test("FairQueue: a value put back stays behind values of its key that joined earlier", () => {
  const { q, order } = fairFixture(0);
  q.push("a.0", 900); // joined while a.1 was away (a body that took a while)
  q.push("b.1", 1001);
  q.unshift("a.1", 1000);
  assert.deepEqual(order(), ["a.0", "b.1", "a.1"]);
});

Deno.test("FairQueue delete takes a node out of its key; a key's last node takes the key out of the rotation", () => {
  const { q, order } = fairFixture(0);
  const a1 = q.push("a.1");
  const a2 = q.push("a.2");
  q.push("a.3");
  const b1 = q.push("b.1");
  q.push("c.1");
  assert.equal(q.delete(a2), true, "from the middle of a key");
  assert.equal(q.delete(a2), false, "only once");
  assert.equal(q.size, 4);
  assert.equal(q.delete(b1), true, "a key's only node");
  assert.equal(q.keys, 2);
  assert.deepEqual([...q.keyNames()], ["a", "c"]);
  assert.equal(q.delete(a1), true, "the head");
  assert.equal(q.head?.value, "a.3");
  // b comes back as a new key, at the end.
  q.push("b.2");
  assert.deepEqual(order(), ["a.3", "c.1", "b.2"]);
  assert.equal(q.delete(a1), false, "a shifted or deleted node is not queued");
});

Deno.test("FairQueue times out each value on its deadline, whatever its key, on one timer armed for the oldest", () => {
  using timers = fakeTimers();
  const { q, clock, expired } = fairFixture(100);
  q.push("a.1", 1000);
  q.push("a.2", 1040);
  q.push("b.1", 1020);
  const c1 = q.push("c.1", 1030);
  assert.equal(timers.only().delay, 100, "one timer, for a.1's deadline");
  assert.equal(timers.created.length, 1, "later values did not touch it");
  // A value that joined earlier than every other (its body took a while)
  // is due first: the timer is armed again for it.
  const d1 = q.push("d.1", 990);
  assert.equal(timers.only().delay, 90);
  assert.equal(q.oldestSince, 990);
  // It leaves before its deadline; the timer stays, fires early, and
  // re-arms for the oldest left (a.1, at 1100).
  q.delete(d1);
  q.delete(c1);
  assert.equal(q.oldestSince, 1000);
  clock.now = 1090;
  timers.fire();
  assert.deepEqual(expired, []);
  assert.equal(timers.only().delay, 10);
  clock.now = 1100;
  timers.fire();
  assert.deepEqual(expired, ["a.1"]);
  assert.equal(q.size, 2);
  // b.1 is due at 1120, before a.2 (1140).
  assert.equal(timers.only().delay, 20);
  clock.now = 1145;
  timers.fire();
  assert.deepEqual(expired, ["a.1", "b.1", "a.2"], "oldest first, over keys");
  assert.equal(q.size, 0);
  assert.equal(q.keys, 0);
  assert.equal(q.oldestSince, null);
  assert.equal(timers.live.size, 0, "no timer while empty");
  // Serving the oldest value leaves the timer alone; emptying stops it.
  q.push("e.1", 1200);
  q.push("f.1", 1210);
  assert.equal(timers.created.length, 5);
  assert.equal(q.shift()?.value, "e.1");
  assert.equal(timers.created.length, 5);
  assert.equal(timers.live.size, 1);
  q.shift();
  assert.equal(timers.live.size, 0);
});

Deno.test("FairQueue knows its oldest value, which need not be its head", () => {
  const { q, clock } = fairFixture(0);
  assert.equal(q.oldestSince, null);
  q.push("a.1", 1000);
  q.push("b.1", 990);
  q.shift(); // a.1; b's turn, a leaves
  clock.now = 1200;
  q.push("a.2");
  q.push("c.1", 980);
  assert.equal(q.head?.value, "b.1");
  assert.equal(q.oldestSince, 980);
});

Deno.test("FairQueue drain returns every value in the order it would serve them and stops the timer", () => {
  using timers = fakeTimers();
  const { q, expired } = fairFixture(100);
  for (const v of ["a.1", "a.2", "b.1", "c.1", "c.2", "c.3"]) q.push(v);
  assert.equal(timers.live.size, 1);
  assert.deepEqual(q.drain(), ["a.1", "b.1", "c.1", "a.2", "c.2", "c.3"]);
  assert.equal(q.size, 0);
  assert.equal(q.keys, 0);
  assert.equal(q.head, null);
  assert.equal(timers.live.size, 0);
  assert.deepEqual(expired, []);
});

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * The fair queue as plainly as it can be said: per key an array in order of
 * `since` (a push goes behind values that joined at or before it, an
 * unshift ahead of values that joined at or after it), and the rotation an
 * array of keys. With a ledger the rotation is kept the same way, and the
 * key served is the one that has used least by the ledger, the first in
 * the rotation among equals (which is the order a heap keeps by when each
 * key was last served, joined or put back).
 */
class FairModel {
  keys = new Map<string, { value: string; since: number }[]>();
  rotation: string[] = [];
  timeout: number;
  ledger: ShareLedger | undefined;
  constructor(timeout: number, ledger?: ShareLedger) {
    this.timeout = timeout;
    this.ledger = ledger;
  }
  #list(key: string, front: boolean) {
    let list = this.keys.get(key);
    if (list === undefined) {
      list = [];
      this.keys.set(key, list);
      if (front) this.rotation.unshift(key);
      else this.rotation.push(key);
    } else if (front) {
      this.rotation.splice(this.rotation.indexOf(key), 1);
      this.rotation.unshift(key);
    }
    return list;
  }
  #leaveIfEmpty(key: string) {
    if (this.keys.get(key)!.length > 0) return;
    this.keys.delete(key);
    this.rotation.splice(this.rotation.indexOf(key), 1);
  }
  // The key served next: the rotation's first, or the least used.
  #nextKey(): string | undefined {
    const ledger = this.ledger;
    if (ledger === undefined) return this.rotation[0];
    let best: string | undefined;
    for (const key of this.rotation) {
      if (
        best === undefined || ledger.get(key)!.used < ledger.get(best)!.used
      ) best = key;
    }
    return best;
  }
  push(value: string, since: number) {
    const list = this.#list(keyOf(value), false);
    let at = list.length;
    while (at > 0 && list[at - 1].since > since) at--;
    list.splice(at, 0, { value, since });
  }
  unshift(value: string, since: number) {
    const list = this.#list(keyOf(value), true);
    let at = 0;
    while (at < list.length && list[at].since < since) at++;
    list.splice(at, 0, { value, since });
  }
  head(): string | null {
    const key = this.#nextKey();
    return key === undefined ? null : this.keys.get(key)![0].value;
  }
  shift(): string | null {
    const key = this.#nextKey();
    if (key === undefined) return null;
    this.rotation.splice(this.rotation.indexOf(key), 1);
    const list = this.keys.get(key)!;
    const value = list.shift()!.value;
    if (list.length === 0) this.keys.delete(key);
    else this.rotation.push(key);
    return value;
  }
  delete(value: string): void {
    const key = keyOf(value);
    const list = this.keys.get(key)!;
    list.splice(list.findIndex((e) => e.value === value), 1);
    this.#leaveIfEmpty(key);
  }
  expire(now: number): string[] {
    const out: string[] = [];
    for (const [key, list] of [...this.keys]) {
      while (list.length > 0 && list[0].since + this.timeout <= now) {
        out.push(list.shift()!.value);
      }
      this.#leaveIfEmpty(key);
    }
    return out;
  }
  get size(): number {
    let n = 0;
    for (const list of this.keys.values()) n += list.length;
    return n;
  }
  oldest(): number | null {
    let oldest: number | null = null;
    for (const list of this.keys.values()) {
      if (oldest === null || list[0].since < oldest) oldest = list[0].since;
    }
    return oldest;
  }
}

for (
  const [seed, shared] of [1, 2, 3, 4, 5, 6, 7, 8].map((n) =>
    [n, n > 5] as const
  )
) {
  Deno.test(
    `FairQueue${
      shared ? " with a ledger" : ""
    } matches a plain model over 3000 random operations (seed ${seed}); its head is always what shift returns`,
    async () => {
      using timers = fakeTimers();
      const rand = random(seed);
      const timeout = 500;
      const ledger = shared ? new ShareLedger() : undefined;
      const { q, clock, expired } = fairFixture(timeout, ledger);
      const model = new FairModel(timeout, ledger);
      const nodes = new Map<string, QueueNode<string>>();
      // Values shifted and not yet put back, with when they first joined.
      const out: { value: string; since: number }[] = [];
      // When each timer was armed, by id; timers.created up to `seen` noted.
      const armedAt = new Map<number, number>();
      let seen = 0;
      let made = 0;
      const pick = <T>(list: T[]) => list[Math.floor(rand() * list.length)];
      for (let step = 0; step < 3000; step++) {
        const r = rand();
        const what = r < 0.35
          ? "push"
          : r < 0.6
          ? "shift"
          : r < 0.7
          ? "unshift"
          : r < 0.82
          ? "delete"
          : r < 0.95
          ? "tick"
          : r < 0.98 || ledger === undefined
          ? "expire"
          : "charge";
        if (what === "push") {
          // Few keys, so that keys empty and come back; now and then a value
          // that joined a while ago.
          const value = `${pick(["a", "b", "c", "d", "e"])}.${made++}`;
          const since = rand() < 0.15
            ? clock.now - Math.floor(rand() * 200)
            : clock.now;
          nodes.set(value, q.push(value, since));
          model.push(value, since);
        } else if (what === "shift") {
          const node = q.shift();
          assert.equal(node?.value ?? null, model.shift(), `shift at ${step}`);
          if (node !== null) {
            nodes.delete(node.value);
            out.push({ value: node.value, since: node.since });
          }
        } else if (what === "unshift" && out.length > 0) {
          const { value, since } = out.splice(
            Math.floor(rand() * out.length),
            1,
          )[0];
          nodes.set(value, q.unshift(value, since));
          model.unshift(value, since);
        } else if (what === "delete" && nodes.size > 0) {
          const value = pick([...nodes.keys()]);
          assert.equal(q.delete(nodes.get(value)!), true);
          assert.equal(q.delete(nodes.get(value)!), false);
          nodes.delete(value);
          model.delete(value);
        } else if (what === "charge" && ledger !== undefined) {
          // A key's request ends on a worker (small whole times, so that keys
          // tie), and keys held by nothing are forgotten.
          const key = pick(model.rotation);
          if (key !== undefined) {
            ledger.finish(key, ledger.start(key), Math.floor(rand() * 3) * 10);
          }
          await Promise.resolve();
        } else if (what === "tick") {
          clock.now += Math.floor(rand() * 60);
        } else if (what === "expire") {
          // Every live timer runs: early ones only re-arm.
          const before = expired.length;
          for (const t of [...timers.live.values()]) {
            if (!timers.live.delete(t.id)) continue;
            t.fn();
          }
          const gone = expired.slice(before);
          for (const value of gone) nodes.delete(value);
          assert.deepEqual(
            [...gone].sort(),
            model.expire(clock.now).sort(),
            `expired at ${step}`,
          );
        }
        assert.equal(q.size, model.size, `size at ${step}`);
        assert.equal(q.keys, model.keys.size, `keys at ${step}`);
        assert.deepEqual(
          ledger === undefined ? [...q.keyNames()] : [...q.keyNames()].sort(),
          ledger === undefined ? model.rotation : [...model.rotation].sort(),
          `rotation at ${step}`,
        );
        assert.equal(q.head?.value ?? null, model.head(), `head at ${step}`);
        assert.equal(q.oldestSince, model.oldest(), `oldest at ${step}`);
        // One timer while anything waits, armed no later than the oldest
        // value's deadline (or at once, if that has passed).
        for (; seen < timers.created.length; seen++) {
          armedAt.set(timers.created[seen].id, clock.now);
        }
        assert.equal(
          timers.live.size,
          model.size > 0 ? 1 : 0,
          `timer at ${step}`,
        );
        for (const t of timers.live.values()) {
          const at = armedAt.get(t.id)!;
          assert.ok(
            at + t.delay <= Math.max(model.oldest()! + timeout, at),
            `the timer is due by the oldest deadline at ${step}`,
          );
        }
      }
      assert.ok(made > 500, `${made} values pushed`);
      q.drain();
      assert.equal(timers.live.size, 0);
    },
  );
}

Deno.test("PriorityQueue with keyOf: classes stay strict, each class serves its keys in turn", () => {
  const { q } = priorityFixture(0, undefined, keyOf);
  assert.equal(q.fair, true);
  q.push("a.1");
  q.push("a.2");
  q.push("b.1");
  q.push("a.3", undefined, -5);
  q.push("c.1", undefined, -5);
  q.push("a.4", 900, 5);
  q.push("a.5", undefined, 5);
  q.push("b.2", undefined, 5);
  assert.equal(q.keys, 3, "distinct keys over all classes");
  assert.equal(q.sizeOf("a"), 5, "a key's values over all classes");
  assert.equal(q.sizeOf("c"), 1);
  assert.equal(q.oldestSince, 900);
  assert.deepEqual(
    q.classes().map((c) => [c.priority, c.size, c.oldestSince]),
    [[5, 3, 900], [0, 3, 1000], [-5, 2, 1000]],
  );
  const out: string[] = [];
  for (let head = q.head; head !== null; head = q.head) {
    assert.equal(q.shift(), head, "head is what shift returns");
    out.push(head.value);
  }
  assert.equal(q.shift(), null);
  assert.deepEqual(out, [
    "a.4",
    "b.2",
    "a.5",
    "a.1",
    "b.1",
    "a.2",
    "a.3",
    "c.1",
  ]);
  assert.equal(q.keys, 0);
  // A retry goes to the head of its key in its own class.
  q.push("a.6");
  q.push("b.3");
  q.push("c.2", undefined, 1);
  q.unshift("b.0", 800);
  assert.deepEqual(q.drain(), ["c.2", "b.0", "a.6", "b.3"]);
});

Deno.test("PriorityQueue with keyOf and a step compares each class by its oldest value, not by the head of the key whose turn it is", () => {
  const { q } = priorityFixture(0, 100, keyOf);
  // Class 0: a.1 (900) and a.2 (905) wait; b.1 joins at 1150. Class 1: c.1
  // at 1000, worth 900.
  q.push("a.1", 900);
  q.push("a.2", 905);
  q.push("b.1", 1150);
  q.push("c.1", 1000, 1);
  // Class 0's oldest (900) goes before class 1's (1000 - 100 = 900: a tie,
  // to the higher class), so c.1 first; then class 0.
  assert.equal(q.shift()?.value, "c.1");
  q.push("c.2", 1040, 1); // worth 940
  assert.equal(q.shift()?.value, "a.1", "class 0's oldest is due first");
  // Class 0's head is now b.1 (a's turn passed), which joined at 1150,
  // after c.2's 940; but a.2 (905) still waits in class 0, so class 0
  // still goes first, and serves b.1 in its turn.
  assert.equal(q.head?.value, "b.1");
  assert.equal(q.shift()?.value, "b.1");
  assert.equal(q.shift()?.value, "a.2");
  assert.equal(q.shift()?.value, "c.2");
  assert.equal(q.size, 0);
});

Deno.test("PriorityQueue without keyOf counts no keys", () => {
  const { q } = priorityFixture(0);
  assert.equal(q.fair, false);
  q.push("a.1");
  q.push("b.1", undefined, 3);
  assert.equal(q.keys, 0);
  assert.equal(q.sizeOf("a"), 0);
});

Deno.test("PriorityQueue with keyOf times out a value of any key and class, and drops emptied keys", () => {
  using timers = fakeTimers();
  const clock = { now: 1000 };
  const expired: string[] = [];
  const q = new PriorityQueue<string>({
    timeout: 100,
    onTimeout: (v) => expired.push(v),
    now: () => clock.now,
    keyOf,
  });
  q.push("a.1", 1000);
  q.push("b.1", 1010, 2);
  q.push("b.2", 1050);
  assert.equal(timers.live.size, 2, "one timer per class");
  clock.now = 1110;
  for (const t of [...timers.live.values()]) {
    timers.live.delete(t.id);
    t.fn();
  }
  assert.deepEqual(expired.sort(), ["a.1", "b.1"]);
  assert.equal(q.size, 1);
  assert.equal(q.keys, 1);
  assert.deepEqual(q.classes().map((c) => [c.priority, c.size]), [[0, 1]]);
  assert.equal(q.shift()?.value, "b.2");
  assert.equal(timers.live.size, 0);
});
