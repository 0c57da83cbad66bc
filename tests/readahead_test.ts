/**
 * Read-ahead (`_readahead.ts`): bodies read ahead of their reader in memory,
 * within a shared budget, and on to disk once their memory is used (the
 * spill file, `_spill.ts`), on scripted connections and a real temporary
 * directory. (`tests/body_test.ts` reads every framed body read ahead too.)
 */

import assert from "node:assert/strict";
import { DEFAULT_LIMITS, type Framing } from "../_codec.ts";
import { bodyStream } from "../_body.ts";
import { BufferedReader, writeAll } from "../_io.ts";
import {
  type ReadAheadBudget,
  type ReadAheadControl,
  readAheadStream,
  type SpillOptions,
} from "../_readahead.ts";
import { SpillFile } from "../_spill.ts";
import {
  bytes,
  concat,
  type MemConn,
  memPair,
  pieces,
  ScriptedConn,
  text,
} from "./_memconn.ts";

const turn = () => new Promise((r) => setTimeout(r, 5));

// Waits until `check` holds (file I/O takes a few turns), at most 5 s.
async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1000 && !check(); i++) await turn();
  assert.ok(check(), what);
}

const DATA = new Uint8Array(100).map((_, i) => i);

function stream(
  conn: ScriptedConn | MemConn,
  framing: Framing,
  limit: number,
  budget: ReadAheadBudget,
  spill?: SpillOptions,
  done: unknown[] = [],
): ReadableStream<Uint8Array> {
  return bodyStream(new BufferedReader(conn), framing, {
    limits: DEFAULT_LIMITS,
    onDone: (error) => done.push(error),
    readAhead: { limit, budget, spill },
  })!;
}

async function readAll(s: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  return concat(...await Array.fromAsync(s));
}

Deno.test("bodyStream read ahead: reads up to its limit unasked, then as the reader takes", async () => {
  const data = DATA;
  const conn = new ScriptedConn(pieces(data, 10));
  const budget = { max: 1000, held: 0 };
  const done: unknown[] = [];
  const body = stream(
    conn,
    { kind: "length", length: 100 },
    25,
    budget,
    undefined,
    done,
  );
  await turn();
  // Reads while under the limit: 10, 20, then 30 and stop.
  assert.equal(conn.reads, 3);
  assert.equal(budget.held, 30);
  const reader = body.getReader();
  const first = await reader.read();
  // Small reads are held together (and copied: not views of a 64 KiB
  // array), so the reader takes all three at once.
  assert.deepEqual(first.value, data.slice(0, 30));
  assert.ok(first.value!.buffer.byteLength <= 16 * 1024);
  await turn();
  assert.equal(conn.reads, 6);
  assert.equal(budget.held, 30);
  assert.deepEqual(done, []);
  const rest: Uint8Array[] = [];
  while (true) {
    const { done: end, value } = await reader.read();
    if (end) break;
    rest.push(value);
  }
  assert.deepEqual(concat(first.value!, ...rest), data);
  assert.deepEqual(done, [undefined]);
  assert.equal(budget.held, 0);
});

Deno.test("bodyStream read ahead: the body ends (onDone) before its reader has taken it", async () => {
  const wire = bytes("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  const conn = new ScriptedConn([
    concat(wire, bytes("HTTP/1.1 200 OK\r\n\r\n")),
  ]);
  const budget = { max: 1000, held: 0 };
  const done: unknown[] = [];
  const body = stream(conn, { kind: "chunked" }, 100, budget, undefined, done);
  await turn();
  assert.deepEqual(done, [undefined], "done before any read");
  assert.equal(budget.held, 11);
  await body.cancel(new Error("consumer left"));
  assert.equal(budget.held, 0, "cancel gives the bytes back");
  assert.deepEqual(done, [undefined], "a cancel after the end is no failure");
});

Deno.test("bodyStream read ahead: bodies share the budget, and a reader still gets bytes past it", async () => {
  const budget = { max: 25, held: 0 };
  const a = new ScriptedConn(pieces(DATA, 10));
  const b = new ScriptedConn(pieces(DATA.map((b) => b + 100), 10));
  const streamA = stream(a, { kind: "length", length: 100 }, 1000, budget);
  await turn();
  assert.equal(a.reads, 3, "A stops once the budget is used");
  assert.equal(budget.held, 30);
  const streamB = stream(b, { kind: "length", length: 100 }, 1000, budget);
  await turn();
  assert.equal(b.reads, 0, "B reads nothing ahead");
  const readerB = streamB.getReader();
  const got = await readerB.read();
  assert.deepEqual(
    got.value,
    DATA.slice(0, 10).map((b) => b + 100),
    "B's reader is served",
  );
  await turn();
  assert.equal(b.reads, 1, "and B still reads nothing ahead");
  await streamA.cancel();
  assert.equal(budget.held, 0);
  await turn();
  assert.equal(b.reads, 1, "B resumes read-ahead only when its reader asks");
  await readerB.read();
  await turn();
  assert.ok(b.reads >= 3, `B reads ahead again (${b.reads} reads)`);
  await readerB.cancel();
  assert.equal(budget.held, 0);
});

Deno.test("bodyStream read ahead: bytes that arrive after a cancel are not held", async () => {
  const [near, far] = memPair();
  const budget = { max: 1000, held: 0 };
  const done: unknown[] = [];
  const body = stream(
    near,
    { kind: "length", length: 10 },
    100,
    budget,
    undefined,
    done,
  );
  await turn(); // a read is in flight
  await body.cancel(new Error("consumer left"));
  assert.equal(done.length, 1);
  await writeAll(far, bytes("0123456789"));
  await turn();
  assert.equal(budget.held, 0);
  assert.equal(done.length, 1);
  far.close();
  near.close();
});

Deno.test("bodyStream read ahead: an error after bytes held reaches the reader after those bytes", async () => {
  const conn = new ScriptedConn(["hello"], {
    readError: new Deno.errors.ConnectionReset("reset"),
  });
  const budget = { max: 1000, held: 0 };
  const done: unknown[] = [];
  const body = stream(
    conn,
    { kind: "length", length: 10 },
    100,
    budget,
    undefined,
    done,
  );
  await turn();
  assert.equal(done.length, 1, "onDone has the error at once");
  assert.ok(done[0] instanceof Deno.errors.ConnectionReset);
  const reader = body.getReader();
  assert.equal(text((await reader.read()).value!), "hello");
  await assert.rejects(reader.read(), Deno.errors.ConnectionReset);
  assert.equal(budget.held, 0);
});

// DATA in 10-byte reads: 10 bytes in memory, then the disk (up to `max`).
function spilling(dir: string, max: number) {
  const conn = new ScriptedConn(pieces(DATA, 10));
  const budget = { max: 1000, held: 0 };
  const spill: SpillOptions = { dir, max, held: 0 };
  const done: unknown[] = [];
  const s = stream(
    conn,
    { kind: "length", length: 100 },
    10,
    budget,
    spill,
    done,
  );
  return { conn, budget, spill, done, s };
}

Deno.test("SpillFile gives bytes back in order, empties itself when caught up, and leaves no file", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = await SpillFile.open(dir);
    assert.deepEqual(
      [...Deno.readDirSync(dir)],
      [],
      "unlinked as soon as open",
    );
    await file.append(bytes("hello "));
    await file.append(bytes("world"));
    assert.equal(text(await file.take(3)), "hel");
    // Takes and appends queue in order: the take sees only what came before.
    const [a, , b] = await Promise.all([
      file.take(100),
      file.append(bytes("again")),
      file.take(100),
    ]);
    assert.equal(text(a), "lo world");
    assert.equal(text(b), "again");
    assert.equal((await file.take(10)).length, 0, "nothing left");
    await file.append(bytes("after a rewind"));
    assert.equal(text(await file.take(100)), "after a rewind");
    file.close();
    await assert.rejects(file.append(bytes("x")), Deno.errors.BadResource);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("SpillFile in segments: a reader a little behind a faster writer gets every byte in order, and the disk holds what waits plus at most one segment", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const segment = 64;
    const file = await SpillFile.open(dir, { segment });
    // Seeded: appends of 1-100 bytes, takes of 1-80; the writer stays
    // ahead, as a worker faster than its consumer.
    let seed = 7;
    const next = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return 1 + (seed % n);
    };
    let written = 0;
    let read = 0;
    let most = 0;
    for (let i = 0; i < 300; i++) {
      const chunk = new Uint8Array(next(100)).map((_, j) => written + j);
      await file.append(chunk);
      written += chunk.length;
      const got = await file.take(next(80));
      for (const [j, b] of got.entries()) {
        assert.equal(b, (read + j) & 0xff, `byte ${read + j}`);
      }
      read += got.length;
      const waiting = written - read;
      const onDisk = await file.diskUsage();
      assert.ok(
        onDisk <= waiting + segment,
        `${onDisk} on disk with ${waiting} waiting`,
      );
      most = Math.max(most, waiting);
    }
    assert.ok(most > 4 * segment, "the writer got well ahead");
    const rest = await file.take(written);
    assert.equal(read + rest.length, written);
    assert.equal(await file.diskUsage(), 0, "emptied when caught up");
    file.close();
    assert.deepEqual([...Deno.readDirSync(dir)], [], "no file left");
    await assert.rejects(SpillFile.open(dir, { segment: 0 }), RangeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead goes on to disk past its memory and gives every byte back in order", async () => {
  const dir = await Deno.makeTempDir();
  try {
    for (const size of [1, 7, 10, 33]) {
      const conn = new ScriptedConn(pieces(DATA, size));
      const budget = { max: 1000, held: 0 };
      const spill: SpillOptions = { dir, max: 1000, held: 0 };
      const done: unknown[] = [];
      const s = stream(
        conn,
        { kind: "length", length: 100 },
        20,
        budget,
        spill,
        done,
      );
      await until(() => done.length === 1, `${size}: the body read ahead`);
      assert.deepEqual(done, [undefined]);
      assert.ok(budget.held >= 20 && budget.held < 20 + size, `${size}`);
      assert.equal(budget.held + spill.held, 100, `${size}: all held`);
      const reader = s.getReader();
      // Take a little, so memory frees while disk still holds the middle.
      const first = await reader.read();
      const rest: Uint8Array[] = [];
      while (true) {
        const { done: end, value } = await reader.read();
        if (end) break;
        rest.push(value);
      }
      assert.deepEqual(concat(first.value!, ...rest), DATA, `${size}`);
      assert.equal(budget.held, 0);
      assert.equal(spill.held, 0);
    }
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead keeps order when memory frees while the disk holds bytes", async () => {
  const dir = await Deno.makeTempDir();
  try {
    // One piece per read: 10 in memory, then disk; each take frees memory,
    // and the next chunk must still come after what is on disk.
    const data = new Uint8Array(400).map((_, i) => i % 251);
    const conn = new ScriptedConn(pieces(data, 10));
    const budget = { max: 1000, held: 0 };
    const spill: SpillOptions = { dir, max: 30, held: 0 };
    const s = stream(conn, { kind: "length", length: 400 }, 10, budget, spill);
    await until(() => spill.held === 30, "memory then 30 bytes on disk");
    assert.equal(budget.held, 10);
    const reader = s.getReader();
    const got: Uint8Array[] = [];
    for (let i = 0; i < 1000; i++) {
      const { done, value } = await reader.read();
      if (done) break;
      got.push(value);
      if (i % 3 === 0) await turn(); // let read-ahead refill in between
    }
    assert.deepEqual(concat(...got), data);
    assert.equal(spill.held + budget.held, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead stops at the spill limit and reads on at the reader's pace", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { conn, spill, done, s } = spilling(dir, 25);
    await until(() => spill.held >= 25, "the spill limit");
    for (let i = 0; i < 10; i++) await turn();
    assert.equal(spill.held, 30, "10 in memory, then 3 reads to disk");
    assert.equal(conn.reads, 4);
    assert.deepEqual(done, []);
    assert.deepEqual(await readAll(s), DATA);
    assert.equal(spill.held, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead whose spill directory is gone reports it once and goes on in memory", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.remove(dir);
  const errors: unknown[] = [];
  const conn = new ScriptedConn(pieces(DATA, 10));
  const budget = { max: 1000, held: 0 };
  const spill: SpillOptions = {
    dir,
    max: 1000,
    held: 0,
    onError: (e) => errors.push(e),
  };
  const s = stream(conn, { kind: "length", length: 100 }, 10, budget, spill);
  await until(() => errors.length === 1, "the error reported");
  await turn();
  assert.ok(errors[0] instanceof Deno.errors.NotFound, String(errors[0]));
  assert.ok(spill.failedAt !== undefined);
  // The chunk that was to go to disk is kept in memory, and no more is read.
  assert.equal(budget.held, 20);
  assert.equal(conn.reads, 2);
  assert.deepEqual(await readAll(s), DATA);
  assert.equal(errors.length, 1);
  assert.equal(budget.held, 0);
});

Deno.test("a cancelled body closes its spill file and gives back what it held", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const { budget, spill, done, s } = spilling(dir, 1000);
    await until(() => spill.held >= 30, "some on disk");
    await s.cancel(new Error("consumer left"));
    assert.equal(budget.held, 0);
    assert.equal(spill.held, 0);
    await turn();
    assert.equal(budget.held + spill.held, 0, "nothing kept after the cancel");
    assert.ok(done.length === 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a body cancelled while a read from its spill file is in flight gives back what it held once", async () => {
  // More than one read from the file (64 KiB each), so the first does not
  // empty it; cancelled after 0 to 6 promise turns, so one of them lands
  // while the file read is under way.
  const big = new Uint8Array(200_000).map((_, i) => i % 253);
  for (let turns = 0; turns <= 6; turns++) {
    const dir = await Deno.makeTempDir();
    try {
      const conn = new ScriptedConn(pieces(big, 50_000));
      const budget = { max: 1000, held: 0 };
      const spill: SpillOptions = { dir, max: 1 << 20, held: 0 };
      // No memory: every byte read ahead goes to disk.
      const s = stream(
        conn,
        { kind: "length", length: 200_000 },
        0,
        budget,
        spill,
      );
      await until(() => spill.held === 200_000, "all on disk");
      const reader = s.getReader();
      const reading = reader.read();
      for (let i = 0; i < turns; i++) await Promise.resolve();
      await reader.cancel(new Error("consumer left"));
      await reading.catch(() => {});
      for (let i = 0; i < 5; i++) await turn();
      assert.equal(spill.held, 0, `cancelled after ${turns} turns`);
      assert.equal(budget.held, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

// readAheadStream on a script of chunks: each read waits for the next turn.
function scripted(chunks: Uint8Array[]) {
  let i = 0;
  return async () => {
    await turn();
    return i < chunks.length ? chunks[i++] : null;
  };
}

Deno.test("readAheadStream takeWhole: the whole body at once only when it is all read and in memory, and untouched", async () => {
  const budget = { max: 1000, held: 0 };
  const control: ReadAheadControl = {};
  let paused = 0;
  control.onPause = () => paused++;
  readAheadStream(
    scripted(pieces(DATA, 10)),
    { limit: 1000, budget },
    () => {},
    control,
  );
  assert.equal(control.takeWhole!(), null, "nothing read yet");
  await until(() => paused > 0, "the end reached");
  assert.equal(budget.held, 100);
  assert.deepEqual(control.takeWhole!(), DATA);
  assert.equal(budget.held, 0, "its memory given back");

  // Past its memory limit: never whole, and still readable as a stream.
  const small = { max: 1000, held: 0 };
  const partial: ReadAheadControl = {};
  const stream = readAheadStream(
    scripted(pieces(DATA, 10)),
    { limit: 30, budget: small },
    () => {},
    partial,
  );
  await until(() => small.held >= 30, "the limit reached");
  assert.equal(partial.takeWhole!(), null);
  assert.deepEqual(await readAll(stream), DATA);
  assert.equal(partial.takeWhole!(), null, "already read from");
  assert.equal(small.held, 0);

  // On disk in part: not whole either.
  const dir = await Deno.makeTempDir({ prefix: "pothead-whole-" });
  try {
    const held = { max: 1000, held: 0 };
    const spill = { dir, max: 1000, held: 0 };
    const spilled: ReadAheadControl = {};
    let spillPaused = 0;
    spilled.onPause = () => spillPaused++;
    const onDisk = readAheadStream(
      scripted(pieces(DATA, 10)),
      { limit: 30, budget: held, spill },
      () => {},
      spilled,
    );
    await until(() => spillPaused > 0, "the end reached");
    assert.ok(spill.held > 0);
    assert.equal(spilled.takeWhole!(), null);
    assert.deepEqual(await readAll(onDisk), DATA);
    assert.equal(held.held + spill.held, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead bodies that share a spill directory stop going to disk at its total", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pothead-total-" });
  try {
    const budget = { max: 20, held: 0 };
    // 100 bytes per body at most, 120 over all: two bodies cannot both
    // put their 200 bytes there.
    const spill = { dir, max: 100, total: 120, held: 0 };
    const paused = [0, 0];
    const data = new Uint8Array(200).map((_, i) => i);
    const streams = [0, 1].map((i) =>
      readAheadStream(
        scripted(pieces(data, 10)),
        {
          limit: 10,
          budget,
          spill,
        },
        () => {},
        { onPause: () => paused[i]++ },
      )
    );
    await until(() => paused[0] > 0 && paused[1] > 0, "both paused");
    // One 10-byte read may pass each limit.
    assert.ok(spill.held >= 120 && spill.held <= 130, `${spill.held} on disk`);
    for (const s of streams) assert.deepEqual(await readAll(s), data);
    assert.equal(spill.held + budget.held, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("read-ahead gathers small chunks into blocks (a body sent a byte per chunk holds about what it counts), in order, and large ones stay whole", async () => {
  // 3000 one-byte chunks, then a large one, then more small ones.
  const tiny = Array.from(
    { length: 3000 },
    (_, i) => new Uint8Array([i & 0xff]),
  );
  const large = new Uint8Array(8192).fill(7);
  const tail = Array.from({ length: 20 }, () => new Uint8Array([9, 9]));
  const all = [...tiny, large, ...tail];
  const budget = { max: 1 << 20, held: 0 };
  let paused = 0;
  let i = 0;
  const stream = readAheadStream(
    () => Promise.resolve(i < all.length ? all[i++] : null),
    { limit: 1 << 20, budget },
    () => {},
    { onPause: () => paused++ },
  );
  await until(() => paused > 0, "the end reached");
  assert.equal(budget.held, 3000 + 8192 + 40);
  const chunks = await Array.fromAsync(stream);
  assert.deepEqual(concat(...chunks), concat(...all));
  assert.deepEqual(
    chunks.map((c) => c.length),
    [3000, 8192, 40],
    "small chunks held together, the large one as it came",
  );
  assert.equal(budget.held, 0);
});

Deno.test("readAheadStream with a signal: its abort cuts a body still held (the reader gets the reason, the budget is given back); a finished body is not touched", async () => {
  const budget = { max: 100_000, held: 0 };
  const cutter = new AbortController();
  // Large enough to stay chunks of their own (not gathered into a block).
  const chunks = [new Uint8Array(5000).fill(1), new Uint8Array(5000), null];
  const cancelled: unknown[] = [];
  const held = readAheadStream(
    () => Promise.resolve(chunks.shift() ?? null),
    { limit: 100_000, budget, signal: cutter.signal },
    (reason) => cancelled.push(reason),
  );
  // A second body, read to its end before the abort.
  const other = [bytes("xyz"), null];
  const finished = readAheadStream(
    () => Promise.resolve(other.shift() ?? null),
    { limit: 100, budget, signal: cutter.signal },
    (reason) => cancelled.push(reason),
  );
  assert.equal(text(await readAll(finished)), "xyz");
  await until(() => budget.held === 10_000, "the first body held");
  const reader = held.getReader();
  assert.deepEqual((await reader.read()).value, new Uint8Array(5000).fill(1));
  assert.equal(budget.held, 5000);
  const reason = new Error("hub shut down");
  cutter.abort(reason);
  assert.equal(budget.held, 0);
  assert.deepEqual(cancelled, [reason]);
  await assert.rejects(reader.read(), (e) => e === reason);
  // Made after the abort: cut at once.
  const late = readAheadStream(
    () => Promise.resolve(null),
    { limit: 100, budget, signal: cutter.signal },
    () => {},
  );
  await assert.rejects(late.getReader().read(), (e) => e === reason);
});
