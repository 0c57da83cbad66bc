// The affinity hashes on values: FNV-1a and MurmurHash3's finalizer against
// published vectors (FNV-1a of "a" is 0xe40c292c; fmix32(1) is 0x514e28b7)
// and values worked out by a separate Python script, and the spread that
// rendezvous hashing over them gives.

import assert from "node:assert/strict";
import { hash32, mix32 } from "../_hash.ts";

Deno.test("mix32 is MurmurHash3's fmix32: 0 stays 0, 1 gives 0x514e28b7, unsigned", () => {
  assert.equal(mix32(0), 0);
  assert.equal(mix32(1), 0x514e28b7);
  assert.equal(mix32(-1) >= 0, true);
});

Deno.test("hash32 is FNV-1a finished by fmix32", () => {
  assert.equal(hash32("a"), mix32(0xe40c292c));
  assert.equal(hash32("a"), 0x1a80b1b3);
  assert.equal(hash32("worker-1"), 0x5aed9547);
  assert.notEqual(hash32("m1"), hash32("m2"));
});

Deno.test("rendezvous over hash32 and mix32 spreads 20 000 keys evenly over 4 workers, and a fifth takes a fifth of them from all", () => {
  const rank = (key: string, workers: string[]) => {
    const k = hash32(key);
    let best = "";
    let top = -1;
    for (const w of workers) {
      const score = mix32(k ^ hash32(w));
      if (score > top) [best, top] = [w, score];
    }
    return best;
  };
  const four = ["gpu-a-1", "gpu-a-2", "gpu-b-1", "gpu-b-2"];
  const counts = new Map<string, number>();
  const home = new Map<string, string>();
  for (let i = 0; i < 20_000; i++) {
    const w = rank(`tenant-${i}`, four);
    home.set(`tenant-${i}`, w);
    counts.set(w, (counts.get(w) ?? 0) + 1);
  }
  for (const w of four) {
    const n = counts.get(w) ?? 0;
    assert.ok(n > 4_500 && n < 5_500, `${w}: ${n}`);
  }
  let moved = 0;
  for (const [key, before] of home) {
    const after = rank(key, [...four, "gpu-c-1"]);
    if (after !== before) {
      assert.equal(after, "gpu-c-1");
      moved++;
    }
  }
  assert.ok(moved > 3_500 && moved < 4_500, `${moved} moved`);
});
