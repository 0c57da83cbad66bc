// AddressLogLimit (_log_limit.ts) on its own: which events go out in full,
// what the summaries add up to, and the bound on addresses. Windows are
// ended by flush(), never by waiting.

import assert from "node:assert/strict";
import { AddressLogLimit, type Suppressed } from "../_log_limit.ts";

const LONG = 3_600_000;

Deno.test("the first event of each address in a window is admitted, the rest are summed up at its end", () => {
  const sums: Suppressed[] = [];
  const limit = new AddressLogLimit(LONG, 10, (s) => sums.push(s));
  const admitted = ["a", "a", "b", "a", "b", "c"].map((a) => limit.admit(a));
  assert.deepEqual(admitted, [true, false, true, false, false, true]);
  assert.deepEqual(sums, []);
  limit.flush();
  assert.deepEqual(sums, [
    { address: "a", count: 2, windowMs: LONG },
    { address: "b", count: 1, windowMs: LONG },
  ]);
  // A new window logs each address's first event in full again.
  assert.equal(limit.admit("a"), true);
  limit.close();
  assert.equal(sums.length, 2);
});

Deno.test("past maxAddresses, events from new addresses are counted together and hold no state", () => {
  const sums: Suppressed[] = [];
  const limit = new AddressLogLimit(LONG, 3, (s) => sums.push(s));
  let admitted = 0;
  for (let i = 0; i < 5_000; i++) {
    if (limit.admit(`127.0.${i >> 8}.${i & 255}`)) admitted++;
  }
  assert.equal(admitted, 3);
  limit.close();
  assert.deepEqual(sums, [{ address: null, count: 4_997, windowMs: LONG }]);
});

Deno.test("after close() every event is admitted and no timer is left", () => {
  const sums: Suppressed[] = [];
  const limit = new AddressLogLimit(LONG, 3, (s) => sums.push(s));
  assert.equal(limit.admit("a"), true);
  assert.equal(limit.admit("a"), false);
  limit.close();
  assert.deepEqual(sums, [{ address: "a", count: 1, windowMs: LONG }]);
  assert.equal(limit.admit("a"), true);
  assert.equal(limit.admit("a"), true);
  // The op sanitizer fails this test if a timer were still pending.
});
