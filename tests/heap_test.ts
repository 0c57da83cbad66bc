// IndexedHeap against a sorted array, over random pushes, updates and
// removals.
import assert from "node:assert/strict";
import { IndexedHeap } from "../_heap.ts";

interface Item {
  name: number;
  key: number;
  at: number;
}

function heap(): IndexedHeap<Item> {
  return new IndexedHeap<Item>(
    (a, b) => a.key < b.key || (a.key === b.key && a.name < b.name),
    { get: (t) => t.at, set: (t, i) => t.at = i },
  );
}

Deno.test("IndexedHeap gives its least item first, and knows where each item is", () => {
  const h = heap();
  const items = [5, 3, 8, 1, 9, 2].map((key, name) => ({ name, key, at: -1 }));
  for (const item of items) h.push(item);
  assert.equal(h.size, 6);
  assert.equal(h.peek()?.key, 1);
  // Raising the least moves it down; lowering another moves it up.
  items[3].key = 10;
  h.update(items[3]);
  assert.equal(h.peek()?.key, 2);
  items[2].key = 0;
  h.update(items[2]);
  assert.equal(h.peek(), items[2]);
  h.delete(items[2]);
  assert.equal(items[2].at, -1);
  assert.equal(h.has(items[2]), false);
  h.delete(items[2]); // absent: nothing happens
  h.update(items[2]);
  assert.equal(h.size, 5);
  const out: number[] = [];
  for (let t = h.peek(); t !== undefined; t = h.peek()) {
    out.push(t.key);
    h.delete(t);
  }
  assert.deepEqual(out, [2, 3, 5, 9, 10]);
  assert.equal(h.peek(), undefined);
});

for (const seed of [1, 2, 3]) {
  Deno.test(`IndexedHeap matches a sorted array over 5000 random operations (seed ${seed})`, () => {
    let a = seed;
    const rand = () => {
      a = (Math.imul(a, 1103515245) + 12345) >>> 0;
      return a / 4294967296;
    };
    const h = heap();
    const live: Item[] = [];
    let made = 0;
    const least = () =>
      live.reduce<Item | undefined>(
        (m, t) =>
          m === undefined || t.key < m.key ||
            (t.key === m.key && t.name < m.name)
            ? t
            : m,
        undefined,
      );
    for (let step = 0; step < 5000; step++) {
      const r = rand();
      if (r < 0.4 || live.length === 0) {
        const item = { name: made++, key: Math.floor(rand() * 50), at: -1 };
        h.push(item);
        live.push(item);
      } else if (r < 0.7) {
        const item = live[Math.floor(rand() * live.length)];
        item.key = Math.floor(rand() * 50);
        h.update(item);
      } else {
        const item = rand() < 0.5
          ? least()!
          : live[Math.floor(rand() * live.length)];
        h.delete(item);
        live.splice(live.indexOf(item), 1);
      }
      assert.equal(h.size, live.length, `size at ${step}`);
      assert.equal(h.peek(), least(), `least at ${step}`);
      for (const item of live) assert.ok(h.has(item));
    }
    assert.ok(made > 1000);
  });
}
