// The worker-time ledger of fair queuing by time (_share.ts), and a
// FairQueue ordered by it, driven by hand: no sockets, no clocks.

import assert from "node:assert/strict";
import { ShareLedger } from "../_share.ts";
import { FairQueue } from "../_queue.ts";

const microtask = () => new Promise<void>((resolve) => queueMicrotask(resolve));

Deno.test("ShareLedger: a key is remembered while held and forgotten once the task that released it ends", async () => {
  const ledger = new ShareLedger();
  const a = ledger.hold("a");
  assert.deepEqual({ ...a }, {
    key: "a",
    used: 0,
    weight: 1,
    refs: 1,
    queued: 0,
    mean: -1,
  });
  ledger.hold("a");
  assert.equal(a.refs, 2);
  ledger.release("a");
  ledger.release("a");
  // Released, then held again in the same task (a request leaves the queue
  // and starts on a worker): the account stays.
  ledger.finish("a", 0, 40);
  ledger.hold("a");
  await microtask();
  assert.equal(ledger.get("a"), a);
  assert.equal(a.used, 40);
  ledger.release("a");
  ledger.release("a"); // one too many: ignored
  assert.equal(a.refs, 0);
  await microtask();
  assert.equal(ledger.get("a"), undefined);
  assert.equal(ledger.size, 0);
});

Deno.test("ShareLedger: start charges the key's mean, or the pool's, and finish charges the rest", () => {
  const ledger = new ShareLedger();
  ledger.hold("a");
  ledger.hold("b");
  assert.equal(ledger.start("a"), 0, "nothing known yet");
  ledger.finish("a", 0, 100);
  assert.equal(ledger.get("a")!.used, 100);
  assert.equal(ledger.get("a")!.mean, 100);
  assert.equal(ledger.mean, 100);
  // The key's own mean.
  assert.equal(ledger.start("a"), 100);
  assert.equal(ledger.get("a")!.used, 200);
  ledger.finish("a", 100, 20); // took less than charged: 80 back
  assert.equal(ledger.get("a")!.used, 120);
  assert.equal(ledger.get("a")!.mean, 100 + (20 - 100) / 4);
  assert.equal(ledger.mean, 100 + (20 - 100) / 16);
  // A key with no mean of its own is charged the pool's.
  assert.equal(ledger.start("b"), ledger.mean);
  // A failed clock reading charges nothing.
  const before = ledger.get("b")!.used;
  ledger.finish("b", 0, NaN);
  assert.equal(ledger.get("b")!.used, before);
  // Unknown keys change nothing.
  assert.equal(ledger.start("zz"), 0);
  ledger.finish("zz", 0, 5);
  assert.equal(ledger.get("zz"), undefined);
});

Deno.test("ShareLedger: a key's mean outlives its account, for the 4096 keys seen last", async () => {
  const ledger = new ShareLedger();
  ledger.hold("heavy");
  ledger.finish("heavy", 0, 1000);
  ledger.hold("light");
  ledger.finish("light", 0, 10);
  ledger.release("light");
  await microtask();
  assert.equal(ledger.get("light"), undefined, "the account went");
  ledger.hold("light");
  assert.equal(ledger.start("light"), 10, "its own mean, not the pool's");
  assert.ok(ledger.mean > 500);
  // 4096 other keys later, its mean is gone too.
  ledger.release("light");
  for (let i = 0; i < 4096; i++) {
    ledger.hold(`k${i}`);
    ledger.finish(`k${i}`, 0, 1);
    ledger.release(`k${i}`);
  }
  await microtask();
  ledger.hold("light");
  assert.equal(ledger.start("light"), ledger.mean);
  ledger.hold("k4095");
  assert.equal(ledger.start("k4095"), 1);
});

Deno.test("ShareLedger: the clock is what the key served last had used; a key new or back starts there", async () => {
  const ledger = new ShareLedger();
  ledger.hold("a");
  ledger.finish("a", 0, 500);
  assert.equal(ledger.clock, 0, "finishing does not move it");
  ledger.start("a");
  assert.equal(ledger.clock, 500);
  const b = ledger.hold("b");
  assert.equal(b.used, 500, "a newcomer does not get a's 500 ms back");
  ledger.release("a");
  ledger.release("b");
  await microtask();
  // Back after an idle spell: level with the clock, not with its old debt
  // nor with credit for the spell.
  assert.equal(ledger.hold("a").used, 500);
  // The clock never goes back.
  ledger.hold("c").used = 100;
  ledger.start("c");
  assert.equal(ledger.clock, 500);
});

Deno.test("ShareLedger: listeners hear every change of a key's use", () => {
  const ledger = new ShareLedger();
  const heard: [string, number][] = [];
  ledger.listen((entry) => heard.push([entry.key, entry.used]));
  ledger.hold("a");
  ledger.start("a"); // estimate 0: no change
  ledger.finish("a", 0, 30);
  ledger.start("a");
  ledger.finish("a", 30, 30); // as estimated: no change
  assert.deepEqual(heard, [["a", 30], ["a", 60]]);
});

Deno.test("ShareLedger: a key is charged its time divided by its weight; the mean stays in milliseconds", () => {
  const ledger = new ShareLedger({
    weightOf: (key) => key === "gold" ? 4 : 1,
  });
  const gold = ledger.hold("gold");
  const base = ledger.hold("base");
  assert.equal(gold.weight, 4);
  assert.equal(base.weight, 1);
  ledger.finish("gold", 0, 100);
  ledger.finish("base", 0, 100);
  assert.equal(gold.used, 25);
  assert.equal(base.used, 100);
  assert.equal(gold.mean, 100);
  assert.equal(ledger.start("gold"), 100, "the estimate is in worker ms");
  assert.equal(gold.used, 50);
  ledger.finish("gold", 100, 60);
  assert.equal(gold.used, 40);
});

Deno.test("ShareLedger: a weighted key raised to the clock is at the clock, not past it", () => {
  const ledger = new ShareLedger({ weightOf: (k) => k === "w" ? 4 : 1 });
  ledger.hold("a");
  ledger.finish("a", 0, 400);
  ledger.start("a"); // clock 400
  const w = ledger.hold("w"); // running only: starts at the clock
  ledger.hold("a", true);
  ledger.finish("a", 0, 0);
  ledger.start("a"); // clock moves on to a's use
  assert.equal(ledger.clock, 800);
  assert.ok(w.used < ledger.clock);
  ledger.hold("w", true);
  assert.equal(w.used, ledger.clock);
});

Deno.test("ShareLedger per request: each request costs 1 over its key's weight, whatever it takes", () => {
  const ledger = new ShareLedger({
    per: "request",
    weightOf: (key) => key === "gold" ? 4 : 1,
  });
  const gold = ledger.hold("gold");
  const base = ledger.hold("base");
  assert.equal(ledger.start("gold"), 1);
  ledger.finish("gold", 1, 5000);
  assert.equal(ledger.start("base"), 1);
  ledger.finish("base", 1, 3);
  assert.equal(gold.used, 0.25);
  assert.equal(base.used, 1);
  assert.equal(gold.mean, -1, "no time is learnt");
  assert.equal(ledger.mean, -1);
});

// A FairQueue keyed by a value's first letter, on `ledger` (or in turn).
function queueOn(ledger?: ShareLedger): FairQueue<string> {
  return new FairQueue<string>({
    timeout: 0,
    onTimeout: () => {},
    keyOf: (v) => v[0],
    ledger,
  });
}

// One worker serves two keys through a FairQueue on a ledger; `a`'s jobs
// take `long` ms, `b`'s 10. Returns the worker time each key got in the
// first `horizon` ms.
function share(long: number, horizon: number, ledger?: ShareLedger) {
  const q = queueOn(ledger);
  for (let i = 0; i < 3000; i++) {
    q.push(`a${i}`);
    q.push(`b${i}`);
  }
  const got = { a: 0, b: 0 };
  for (let now = 0; now < horizon;) {
    const key = q.shift()!.value[0] as "a" | "b";
    const ms = key === "a" ? long : 10;
    const estimate = ledger?.start(key) ?? 0;
    ledger?.finish(key, estimate, ms);
    got[key] += Math.min(ms, horizon - now);
    now += ms;
  }
  return got;
}

Deno.test("FairQueue with a ledger: keys get equal worker time, not equal turns", () => {
  for (const long of [30, 100, 1000]) {
    const byTime = share(long, 20_000, new ShareLedger());
    const share_ = byTime.a / (byTime.a + byTime.b);
    assert.ok(
      Math.abs(share_ - 0.5) <= long / 20_000 + 0.01,
      `jobs of ${long} ms: a got ${(share_ * 100).toFixed(1)}% of the time`,
    );
    // In turn, a's share is its job length's share.
    const byTurn = share(long, 20_000);
    assert.ok(
      Math.abs(byTurn.a / (byTurn.a + byTurn.b) - long / (long + 10)) < 0.01,
    );
  }
});

Deno.test("FairQueue with a weighted ledger: worker time goes in proportion to the weights", () => {
  // Equal jobs: a (weight 3) gets three quarters of the time.
  const weighted = share(
    10,
    20_000,
    new ShareLedger({ weightOf: (k) => k === "a" ? 3 : 1 }),
  );
  assert.ok(
    Math.abs(weighted.a / (weighted.a + weighted.b) - 0.75) < 0.01,
    `a got ${weighted.a} ms, b ${weighted.b}`,
  );
  // Jobs of 30 ms against 10 and weight 3: even shares of turns, three
  // quarters of the time.
  const long = share(
    30,
    20_000,
    new ShareLedger({ weightOf: (k) => k === "a" ? 3 : 1 }),
  );
  assert.ok(Math.abs(long.a / (long.a + long.b) - 0.75) < 0.01);
});

Deno.test("FairQueue with a ledger: a value put back serves next among keys that used as little, and a key's turn passes when served", () => {
  const ledger = new ShareLedger();
  const q = queueOn(ledger);
  for (const v of ["a1", "a2", "b1", "b2", "c1"]) q.push(v);
  assert.equal(q.shift()!.value, "a1");
  assert.equal(q.shift()!.value, "b1");
  // Nothing charged yet: c, then a, b in turn.
  q.unshift("b1", 0);
  assert.equal(q.head!.value, "b1");
  assert.equal(q.shift()!.value, "b1");
  ledger.start("c");
  ledger.finish("c", 0, 50);
  // c has used 50 ms: a and b go first.
  assert.deepEqual([q.shift()!.value, q.shift()!.value, q.shift()!.value], [
    "a2",
    "b2",
    "c1",
  ]);
  assert.equal(q.size, 0);
  assert.equal(q.keys, 0);
});

Deno.test("FairQueue with a ledger: a key that only had a request running while others were served queues level with the clock, not ahead by that time", () => {
  // k has a long request running (a WebSocket, a long poll), charged its
  // estimate until it ends, and nothing queued; a and b are served 100
  // jobs of 10 ms meanwhile. When k queues again it must not be 500 ms
  // ahead of them: it takes its turns with theirs, as a key that had
  // nothing running would.
  const order = (running: boolean) => {
    const ledger = new ShareLedger();
    const q = queueOn(ledger);
    if (running) {
      ledger.hold("k");
      ledger.start("k");
    }
    for (let i = 0; i < 100; i++) q.push(`a${i}`), q.push(`b${i}`);
    const serve = () => {
      const key = q.shift()!.value[0];
      ledger.hold(key);
      ledger.finish(key, ledger.start(key), 10);
      ledger.release(key);
      return key;
    };
    for (let i = 0; i < 100; i++) serve();
    for (let i = 0; i < 40; i++) q.push(`k${i}`);
    let out = "";
    for (let i = 0; i < 12; i++) out += serve();
    return out;
  };
  assert.equal(order(false), "kabkabkabkab");
  assert.equal(order(true), "kabkabkabkab");
});

Deno.test("ShareLedger: a key queued again is raised to the clock only if nothing of it was queued", () => {
  const ledger = new ShareLedger();
  const k = ledger.hold("k"); // running
  ledger.hold("a", true);
  ledger.finish("a", ledger.start("a"), 0);
  ledger.get("a")!.used = 300;
  ledger.start("a"); // the clock: 300
  assert.equal(ledger.clock, 300);
  assert.equal(k.used, 0);
  ledger.hold("k", true);
  assert.deepEqual([k.used, k.queued, k.refs], [300, 1, 2]);
  // Queued already: not raised again (it is behind only by waiting).
  k.used = 100;
  ledger.hold("k", true);
  assert.deepEqual([k.used, k.queued, k.refs], [100, 2, 3]);
  ledger.release("k", true);
  ledger.release("k", true);
  assert.deepEqual([k.queued, k.refs], [0, 1]);
  ledger.hold("k", true);
  assert.equal(k.used, 300);
});
