// SpillFile in segments against a model (seeded), close races, and
// readAheadStream's signal: no listener left, aborts while a read waits.
import assert from "node:assert/strict";
import { SpillFile } from "../_spill.ts";
import { readAheadStream } from "../_readahead.ts";

function rng(seed: number) {
  return (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % (n + 1); // 0..n
  };
}

Deno.test("SpillFile fuzz vs model, segment sizes 1..9, zero-length appends and takes, exact boundaries", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (let segment = 1; segment <= 9; segment++) {
      for (let seed = 1; seed <= 2; seed++) {
        const next = rng(seed * 31 + segment);
        const file = await SpillFile.open(dir, { segment });
        let written = 0;
        let read = 0;
        for (let i = 0; i < 150; i++) {
          const op = next(3);
          if (op < 2) {
            // multiples of the segment sometimes, zero sometimes
            const len = next(4) === 0 ? segment * next(3) : next(3 * segment);
            const chunk = new Uint8Array(len).map((_, j) => written + j);
            await file.append(chunk);
            written += len;
          } else {
            const want = next(4) === 0 ? segment : next(4 * segment);
            const got = await file.take(want);
            assert.equal(got.length, Math.min(want, written - read));
            for (const [j, b] of got.entries()) {
              assert.equal(
                b,
                (read + j) & 0xff,
                `seg ${segment} byte ${read + j}`,
              );
            }
            read += got.length;
          }
          const usage = await file.diskUsage();
          assert.ok(
            usage <= written - read + segment,
            `seg ${segment}: ${usage} on disk, ${written - read} waiting`,
          );
        }
        const rest = await file.take(written);
        assert.equal(rest.length, written - read);
        for (const [j, b] of rest.entries()) assert.equal(b, (read + j) & 0xff);
        assert.equal(await file.diskUsage(), 0);
        file.close();
      }
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SpillFile close racing append (new segment) and take leaks nothing", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (let k = 0; k < 20; k++) {
      const file = await SpillFile.open(dir, { segment: 3 });
      await file.append(new Uint8Array(3));
      const a = file.append(new Uint8Array(10)); // opens segments
      const t = file.take(5);
      // close after k turns
      for (let i = 0; i < k; i++) await Promise.resolve();
      if (k % 2) await new Promise((r) => setTimeout(r, k));
      file.close();
      await Promise.allSettled([a, t]);
      await assert.rejects(file.take(1));
      await assert.rejects(file.append(new Uint8Array(1)));
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// A signal-like object that counts its listeners.
function countingSignal() {
  const c = new AbortController();
  const sig = c.signal;
  const add = sig.addEventListener.bind(sig);
  const remove = sig.removeEventListener.bind(sig);
  const set = new Set<unknown>();
  Object.defineProperty(sig, "addEventListener", {
    value: (type: string, l: EventListener, o?: unknown) => {
      if (type === "abort") set.add(l);
      add(type, l, o as AddEventListenerOptions);
    },
  });
  Object.defineProperty(sig, "removeEventListener", {
    value: (type: string, l: EventListener, o?: unknown) => {
      if (type === "abort") set.delete(l);
      remove(type, l, o as EventListenerOptions);
    },
  });
  return { c, sig, count: () => set.size };
}

Deno.test("readAheadStream leaves no listener on the signal after many bodies, however they end", async () => {
  const { sig, count } = countingSignal();
  const budget = { max: 1_000_000, held: 0 };
  const opts = { limit: 100_000, budget, signal: sig };
  // read to end
  for (let i = 0; i < 10; i++) {
    const chunks = [new Uint8Array(10), null];
    const s = readAheadStream(
      () => Promise.resolve(chunks.shift() ?? null),
      opts,
      () => {},
    );
    await Array.fromAsync(s);
  }
  assert.equal(count(), 0, "after reading to end");
  // cancelled
  for (let i = 0; i < 10; i++) {
    const chunks = [new Uint8Array(10), null];
    const s = readAheadStream(
      () => Promise.resolve(chunks.shift() ?? null),
      opts,
      () => {},
    );
    await s.cancel();
  }
  assert.equal(count(), 0, "after cancel");
  // failed
  for (let i = 0; i < 10; i++) {
    const s = readAheadStream(
      () => Promise.reject(new Error("x")),
      opts,
      () => {},
    );
    await assert.rejects(Array.fromAsync(s));
  }
  assert.equal(count(), 0, "after failure");
  // pipeTo a WritableStream (like the 205 path)
  for (let i = 0; i < 10; i++) {
    const chunks = [new Uint8Array(10), null];
    const s = readAheadStream(
      () => Promise.resolve(chunks.shift() ?? null),
      opts,
      () => {},
    );
    await s.pipeTo(new WritableStream());
  }
  assert.equal(count(), 0, "after pipeTo");
  // a Response body read by Response.arrayBuffer
  for (let i = 0; i < 10; i++) {
    const chunks = [new Uint8Array(10), null];
    const s = readAheadStream(
      () => Promise.resolve(chunks.shift() ?? null),
      opts,
      () => {},
    );
    await new Response(s).arrayBuffer();
  }
  assert.equal(count(), 0, "after Response.arrayBuffer");
  assert.equal(budget.held, 0);
});

Deno.test("abort while pull waits for a read (nothing held yet)", async () => {
  const c = new AbortController();
  const budget = { max: 1_000_000, held: 0 };
  let release: ((v: Uint8Array | null) => void) | undefined;
  let cancelled = 0;
  const s = readAheadStream(
    () => new Promise((r) => release = r),
    { limit: 0, budget, signal: c.signal },
    () => cancelled++,
  );
  const reader = s.getReader();
  const r = reader.read();
  await new Promise((r) => setTimeout(r, 10));
  c.abort(new Error("cut"));
  await assert.rejects(r, /cut/);
  // the read finishes afterwards with the end: no throw, no leak
  release!(null);
  await new Promise((r) => setTimeout(r, 10));
  assert.equal(cancelled, 1);
  assert.equal(budget.held, 0);
});
