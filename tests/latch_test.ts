/** The shutdown latch (_latch.ts): races that leave nothing behind. */

import assert from "node:assert/strict";
import { Latch } from "../_latch.ts";

Deno.test("latch: a race settles with its work and forgets its waiter", async () => {
  const latch = new Latch();
  const work = Promise.withResolvers<string>();
  const racing = latch.race(work.promise);
  assert.equal(latch.waiting, 1);
  work.resolve("body");
  assert.equal(await racing, "body");
  assert.equal(latch.waiting, 0);

  const failing = Promise.withResolvers<string>();
  const failed = latch.race(failing.promise);
  failing.reject(new Error("cut"));
  await assert.rejects(failed, /cut/);
  assert.equal(latch.waiting, 0);
});

Deno.test("latch: opening it ends every pending race with undefined, and later ones at once", async () => {
  const latch = new Latch();
  const never = new Promise<number>(() => {});
  const races = [latch.race(never), latch.race(never)];
  assert.equal(latch.waiting, 2);
  assert.equal(latch.isOpen, false);
  latch.open();
  latch.open(); // a second open changes nothing
  assert.equal(latch.isOpen, true);
  assert.deepEqual(await Promise.all(races), [undefined, undefined]);
  assert.equal(latch.waiting, 0);
  assert.equal(await latch.race(Promise.resolve(1)), undefined);
  assert.equal(latch.waiting, 0);
});

Deno.test("latch: ten thousand settled races leave no waiter", async () => {
  const latch = new Latch();
  for (let i = 0; i < 10_000; i++) await latch.race(Promise.resolve(i));
  assert.equal(latch.waiting, 0);
});
