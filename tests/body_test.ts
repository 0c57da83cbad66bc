/**
 * Byte tests for the body framers in `_body.ts`: every valid body is read
 * from a scripted connection split at every byte offset, and the reader must
 * stop exactly at the next message.
 */

import assert from "node:assert/strict";
import { DEFAULT_LIMITS, type Framing, type HeadLimits } from "../_codec.ts";
import {
  bodyStream,
  PrematureEndError,
  readFixed,
  writeBody,
  type WriteFraming,
} from "../_body.ts";
import { BufferedReader, writeAll } from "../_io.ts";
import {
  bytes,
  concat,
  memPair,
  pieces,
  readAll,
  ScriptedConn,
  splitAt,
  text,
} from "./_memconn.ts";

const NEXT = bytes("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");

type ErrorClass =
  | typeof SyntaxError
  | typeof RangeError
  | typeof PrematureEndError;

interface RunOptions {
  limits?: HeadLimits;
  maxBodySize?: number;
  /** Fill the reader once before making the stream (as after a head). */
  prefill?: boolean;
  readerSize?: number;
  /** Read ahead of the reader, this many bytes at most (see bodyStream). */
  readAhead?: number;
}

interface Run {
  stream: ReadableStream<Uint8Array> | null;
  body: Uint8Array | null;
  error: unknown;
  /** The argument of each onDone call. */
  done: unknown[];
  /** Bytes left in the reader and the connection after the body. */
  rest: Uint8Array;
}

async function runBody(
  input: Uint8Array[],
  framing: Framing,
  options: RunOptions = {},
): Promise<Run> {
  const conn = new ScriptedConn(input);
  const reader = new BufferedReader(conn, options.readerSize);
  if (options.prefill) await reader.fill();
  const done: unknown[] = [];
  const stream = bodyStream(reader, framing, {
    limits: options.limits ?? DEFAULT_LIMITS,
    maxBodySize: options.maxBodySize,
    onDone: (error?: unknown) => {
      done.push(error);
    },
    readAhead: options.readAhead === undefined ? undefined : {
      limit: options.readAhead,
      budget: { max: 1 << 20, held: 0 },
    },
  });
  let body: Uint8Array | null = null;
  let error: unknown = undefined;
  if (stream !== null) {
    try {
      body = concat(...await Array.fromAsync(stream));
    } catch (e) {
      error = e;
    }
  }
  const rest = concat(reader.take(Infinity), conn.unread);
  return { stream, body, error, done, rest };
}

function* feeds(data: Uint8Array): Generator<[string, Uint8Array[]]> {
  for (let k = 0; k <= data.length; k++) {
    yield [`split at ${k}`, splitAt(data, k)];
  }
  yield ["1-byte pieces", pieces(data, 1)];
  yield ["3-byte pieces", pieces(data, 3)];
}

// Each feed is read with and without a prefilled reader, and on demand or
// read ahead (a few bytes: the read-ahead stops and resumes many times).
const MODES: [boolean, number | undefined][] = [
  [false, undefined],
  [true, undefined],
  [false, 5],
  [true, 5],
  [false, 1000],
];

// Reads `input` in each of MODES; yields each run with a label for its mode.
async function* everyMode(
  input: Uint8Array[],
  framing: Framing,
  options: RunOptions,
): AsyncGenerator<[string, Run]> {
  for (const [prefill, readAhead] of MODES) {
    const mode = `${prefill ? ", prefilled" : ""}${
      readAhead ? `, read ahead ${readAhead}` : ""
    }`;
    yield [
      mode,
      await runBody(input, framing, { ...options, prefill, readAhead }),
    ];
  }
}

async function assertBody(
  wire: Uint8Array,
  framing: Framing,
  expected: Uint8Array,
  options: RunOptions = {},
): Promise<void> {
  const isClose = framing.kind === "close";
  const data = isClose ? wire : concat(wire, NEXT);
  for (const [how, input] of feeds(data)) {
    for await (const [mode, run] of everyMode(input, framing, options)) {
      const label = how + mode;
      assert.equal(run.error, undefined, `${label}: ${run.error}`);
      assert.deepEqual(run.body, expected, label);
      assert.deepEqual(
        run.done,
        [undefined],
        `${label}: onDone once, no error`,
      );
      assert.deepEqual(run.rest, isClose ? new Uint8Array() : NEXT, label);
    }
  }
}

async function assertBodyError(
  wire: Uint8Array,
  framing: Framing,
  errorClass: ErrorClass,
  options: RunOptions = {},
  message?: RegExp,
): Promise<void> {
  for (const [how, input] of feeds(wire)) {
    for await (const [mode, run] of everyMode(input, framing, options)) {
      const label = how + mode;
      assert.ok(run.error instanceof errorClass, `${label}: got ${run.error}`);
      if (message) assert.match(run.error.message, message, label);
      assert.equal(run.done.length, 1, `${label}: onDone once`);
      assert.equal(run.done[0], run.error, `${label}: onDone gets the error`);
    }
  }
}

const allBytes = new Uint8Array(256).map((_, i) => i);

// ---------------------------------------------------------------------------
// Valid bodies

const validBodies: [
  string,
  string | Uint8Array,
  Framing,
  string | Uint8Array,
][] = [
  [
    "a length body",
    "hello world",
    { kind: "length", length: 11 },
    "hello world",
  ],
  ["a one-byte length body", "x", { kind: "length", length: 1 }, "x"],
  [
    "a length body of all 256 byte values",
    allBytes,
    { kind: "length", length: 256 },
    allBytes,
  ],
  [
    "a length body that looks like framing",
    "0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
    { kind: "length", length: 24 },
    "0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
  ],
  [
    "two chunks",
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    { kind: "chunked" },
    "hello world",
  ],
  ["only the last chunk", "0\r\n\r\n", { kind: "chunked" }, ""],
  [
    "chunks with extensions and trailers",
    '5;a=b;c="d"\r\nhello\r\nA ; x\r\n0123456789\r\n0;end\r\nDigest: abc\r\nX: y\r\n\r\n',
    { kind: "chunked" },
    "hello0123456789",
  ],
  [
    "upper-case hex and leading zeros",
    "0000B\r\nhello world\r\n000\r\n\r\n",
    { kind: "chunked" },
    "hello world",
  ],
  [
    "chunk data that looks like framing",
    "b\r\n0\r\n\r\n\r\n0\r\nx\r\n0\r\n\r\n",
    { kind: "chunked" },
    "0\r\n\r\n\r\n0\r\nx",
  ],
  [
    "one-byte chunks",
    "1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n",
    { kind: "chunked" },
    "abc",
  ],
  [
    "a chunk of all 256 byte values",
    concat(bytes("100\r\n"), allBytes, bytes("\r\n0\r\n\r\n")),
    { kind: "chunked" },
    allBytes,
  ],
  [
    "a body until close",
    "everything\r\n0\r\n\r\nuntil the end",
    { kind: "close" },
    "everything\r\n0\r\n\r\nuntil the end",
  ],
  ["an empty body until close", "", { kind: "close" }, ""],
];

for (const [name, wire, framing, expected] of validBodies) {
  Deno.test(`bodyStream reads ${name} split at every offset and stops at the next message`, async () => {
    await assertBody(
      typeof wire === "string" ? bytes(wire) : wire,
      framing,
      typeof expected === "string" ? bytes(expected) : expected,
    );
  });
}

Deno.test("bodyStream reads large length, chunked and close bodies across buffer refills", async () => {
  const big = new Uint8Array(200_000).map((_, i) => (i * 31) & 0xff);
  const chunked = concat(
    bytes(`${(150_000).toString(16)}\r\n`),
    big.subarray(0, 150_000),
    bytes(`\r\n${(50_000).toString(16)};x=y\r\n`),
    big.subarray(150_000),
    bytes("\r\n0\r\nT: v\r\n\r\n"),
  );
  const cases: [Uint8Array, Framing][] = [
    [big, { kind: "length", length: big.length }],
    [chunked, { kind: "chunked" }],
    [big, { kind: "close" }],
  ];
  for (const [wire, framing] of cases) {
    const data = framing.kind === "close" ? wire : concat(wire, NEXT);
    for (const size of [1000, 4093, 16_384, 70_000, data.length]) {
      for (const readerSize of [undefined, 16]) {
        const run = await runBody(pieces(data, size), framing, {
          prefill: true,
          readerSize,
        });
        const label = `${framing.kind}, ${size}-byte pieces`;
        assert.equal(run.error, undefined, `${label}: ${run.error}`);
        assert.deepEqual(run.body, big, label);
        assert.deepEqual(run.done, [undefined], label);
        assert.deepEqual(
          run.rest,
          framing.kind === "close" ? new Uint8Array() : NEXT,
          label,
        );
      }
    }
  }
});

Deno.test("bodyStream returns null for no body and calls onDone at once", async () => {
  const run = await runBody([NEXT], { kind: "none" });
  assert.equal(run.stream, null);
  assert.deepEqual(run.done, [undefined]);
  assert.deepEqual(run.rest, NEXT);
});

Deno.test("bodyStream calls onDone only after the last byte is read", async () => {
  const conn = new ScriptedConn(["3\r\nabc\r\n", "0\r\n\r\n"]);
  const reader = new BufferedReader(conn);
  let done = 0;
  const stream = bodyStream(reader, { kind: "chunked" }, {
    limits: DEFAULT_LIMITS,
    onDone: () => done++,
  })!;
  const r = stream.getReader();
  assert.equal(text((await r.read()).value!), "abc");
  assert.equal(done, 0);
  assert.deepEqual(await r.read(), { done: true, value: undefined });
  assert.equal(done, 1);
});

Deno.test("bodyStream tells onWait when it waits for the peer's next bytes and when that wait ends, and waits for nothing while its reader reads nothing", async () => {
  const conn = new ScriptedConn(["3\r\nabc\r\n", "0\r\n\r\n"]);
  const reader = new BufferedReader(conn);
  const waits: boolean[] = [];
  const stream = bodyStream(reader, { kind: "chunked" }, {
    limits: DEFAULT_LIMITS,
    onDone: () => {},
    onWait: (waiting) => waits.push(waiting),
  })!;
  // Without read-ahead it reads only when asked.
  await new Promise((resolve) => setTimeout(resolve, 10));
  assert.deepEqual(waits, []);
  const r = stream.getReader();
  assert.equal(text((await r.read()).value!), "abc");
  assert.deepEqual(waits, [true, false]);
  assert.deepEqual(await r.read(), { done: true, value: undefined });
  assert.deepEqual(waits, [true, false, true, false]);
});

// ---------------------------------------------------------------------------
// Errors

const invalidBodies: [
  string,
  string,
  Framing,
  ErrorClass,
  RunOptions?,
  RegExp?,
][] = [
  [
    "a length body cut short",
    "hel",
    { kind: "length", length: 5 },
    PrematureEndError,
    {},
    /^Cannot read body: connection closed after 3 of 5 body bytes$/,
  ],
  [
    "a length body with no bytes at all",
    "",
    { kind: "length", length: 5 },
    PrematureEndError,
    {},
    /after 0 of 5/,
  ],
  [
    "a chunked body with no bytes at all",
    "",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /chunk-size line/,
  ],
  [
    "a chunk cut short",
    "5\r\nhel",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /inside a chunk$/,
  ],
  [
    "a chunk-size line cut short",
    "5\r\nhello\r\n1f;a=",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /chunk-size line/,
  ],
  [
    "a chunk without its CRLF",
    "5\r\nhello",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /CRLF/,
  ],
  [
    "a chunk with only the CR of its CRLF",
    "5\r\nhello\r",
    { kind: "chunked" },
    PrematureEndError,
  ],
  [
    "a last chunk without trailer section",
    "5\r\nhello\r\n0\r\n",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /trailer section/,
  ],
  [
    "trailers cut short",
    "0\r\nDigest: x\r\n",
    { kind: "chunked" },
    PrematureEndError,
    {},
    /trailer section/,
  ],
  [
    "an empty line cut short",
    "0\r\n\r",
    { kind: "chunked" },
    PrematureEndError,
  ],
  [
    "chunk data not followed by CRLF",
    "5\r\nhelloX\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
    {},
    /data not followed by CRLF/,
  ],
  [
    "chunk data followed by a bare LF",
    "5\r\nhello\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "chunk data longer than its size",
    "3\r\nhello\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "an invalid chunk size",
    "zz\r\nhello\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
    {},
    /Cannot parse chunk size/,
  ],
  [
    "a negative chunk size",
    "-5\r\nhello\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "garbage after the chunk size",
    "5 x\r\nhello\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "an invalid second chunk size",
    "5\r\nhello\r\n0x1\r\na\r\n0\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "an invalid trailer field",
    "0\r\nBad Name: x\r\n\r\n",
    { kind: "chunked" },
    SyntaxError,
  ],
  [
    "a chunk-size line over maxChunkLineSize",
    "5;aaaaaaaaaaaa\r\nhello\r\n0\r\n\r\n",
    { kind: "chunked" },
    RangeError,
    { limits: { ...DEFAULT_LIMITS, maxChunkLineSize: 8 } },
    /line longer than 8 bytes/,
  ],
  [
    "a length body over maxBodySize",
    "hello world",
    { kind: "length", length: 11 },
    RangeError,
    { maxBodySize: 10 },
    /larger than the limit of 10 bytes/,
  ],
  [
    "a chunked body over maxBodySize",
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    { kind: "chunked" },
    RangeError,
    { maxBodySize: 10 },
  ],
  [
    "a body until close over maxBodySize",
    "hello world",
    { kind: "close" },
    RangeError,
    { maxBodySize: 10 },
  ],
];

for (
  const [name, wire, framing, errorClass, options, message] of invalidBodies
) {
  Deno.test(`bodyStream errors with ${errorClass.name} on ${name}`, async () => {
    await assertBodyError(bytes(wire), framing, errorClass, options, message);
  });
}

Deno.test("bodyStream accepts bodies of exactly maxBodySize bytes", async () => {
  await assertBody(
    bytes("hello world"),
    { kind: "length", length: 11 },
    bytes("hello world"),
    {
      maxBodySize: 11,
    },
  );
  await assertBody(
    bytes("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
    { kind: "chunked" },
    bytes("hello world"),
    { maxBodySize: 11 },
  );
  await assertBody(
    bytes("hello world"),
    { kind: "close" },
    bytes("hello world"),
    {
      maxBodySize: 11,
    },
  );
});

Deno.test("bodyStream passes a connection read error to the stream and onDone", async () => {
  const boom = new Error("connection reset");
  for (
    const framing of [
      { kind: "length", length: 10 },
      { kind: "chunked" },
      { kind: "close" },
    ] as Framing[]
  ) {
    const conn = new ScriptedConn(["5\r\nab"], { readError: boom });
    const reader = new BufferedReader(conn);
    const done: unknown[] = [];
    const stream = bodyStream(reader, framing, {
      limits: DEFAULT_LIMITS,
      onDone: (error?: unknown) => {
        done.push(error);
      },
    })!;
    await assert.rejects(Array.fromAsync(stream), (e) => e === boom);
    assert.deepEqual(done, [boom], framing.kind);
  }
});

// ---------------------------------------------------------------------------
// Cancellation

function cancelFixture(framing: Framing) {
  const conn = new ScriptedConn(["5\r\nhello\r\n", "5\r\nworld\r\n0\r\n\r\n"]);
  const reader = new BufferedReader(conn);
  const done: unknown[] = [];
  const stream = bodyStream(reader, framing, {
    limits: DEFAULT_LIMITS,
    onDone: (error?: unknown) => {
      done.push(error);
    },
  })!;
  return { stream, done };
}

Deno.test("bodyStream calls onDone with the reason when the consumer cancels mid-body", async () => {
  for (
    const framing of [
      { kind: "length", length: 30 },
      { kind: "chunked" },
      { kind: "close" },
    ] as Framing[]
  ) {
    const { stream, done } = cancelFixture(framing);
    const r = stream.getReader();
    const first = await r.read();
    assert.equal(first.done, false);
    await r.cancel("consumer left");
    assert.deepEqual(done, ["consumer left"], framing.kind);
  }
});

Deno.test("bodyStream calls onDone with an Error when cancelled without a reason before reading", async () => {
  const { stream, done } = cancelFixture({ kind: "chunked" });
  await stream.cancel();
  assert.equal(done.length, 1);
  assert.ok(done[0] instanceof Error);
  assert.match(done[0].message, /cancelled/);
});

Deno.test("bodyStream calls onDone with the reason when cancelled while a read waits for the peer", async () => {
  const [a, b] = memPair();
  const done: unknown[] = [];
  const stream = bodyStream(new BufferedReader(b), {
    kind: "length",
    length: 10,
  }, {
    limits: DEFAULT_LIMITS,
    onDone: (error?: unknown) => {
      done.push(error);
    },
  })!;
  const r = stream.getReader();
  await writeAll(a, bytes("12345"));
  assert.equal(text((await r.read()).value!), "12345");
  const pending = r.read(); // waits: the peer sends nothing more
  await r.cancel("consumer left");
  assert.deepEqual(await pending, { done: true, value: undefined });
  assert.deepEqual(done, ["consumer left"]);
  // The owner closes the connection; the read in flight then fails quietly.
  b.close();
  a.close();
  await new Promise((r) => setTimeout(r, 0));
  assert.deepEqual(done, ["consumer left"]);
});

Deno.test("bodyStream does not call onDone again when cancelled after the end", async () => {
  const { stream, done } = cancelFixture({ kind: "chunked" });
  const r = stream.getReader();
  const chunks = [];
  for (let i = 0; i < 10; i++) {
    const { done: end, value } = await r.read();
    if (end) break;
    chunks.push(value);
  }
  assert.equal(text(concat(...chunks)), "helloworld");
  await r.cancel("late");
  assert.deepEqual(done, [undefined]);
});

Deno.test("bodyStream does not call onDone again when cancelled after an error", async () => {
  const conn = new ScriptedConn(["5\r\nhelloXY"]);
  const done: unknown[] = [];
  const stream = bodyStream(new BufferedReader(conn), { kind: "chunked" }, {
    limits: DEFAULT_LIMITS,
    onDone: (error?: unknown) => {
      done.push(error);
    },
  })!;
  const r = stream.getReader();
  await r.read();
  await assert.rejects(r.read(), SyntaxError);
  await r.cancel("late").catch(() => {});
  assert.equal(done.length, 1);
  assert.ok(done[0] instanceof SyntaxError);
});

// ---------------------------------------------------------------------------
// readFixed

Deno.test("readFixed reads exactly the length at every split and leaves the rest", async () => {
  const wire = concat(bytes("hello world"), NEXT);
  for (const [how, input] of feeds(wire)) {
    const conn = new ScriptedConn(input);
    const reader = new BufferedReader(conn);
    assert.equal(text(await readFixed(reader, 11)), "hello world", how);
    assert.deepEqual(concat(reader.take(Infinity), conn.unread), NEXT, how);
  }
});

Deno.test("readFixed throws PrematureEndError when the connection ends early", async () => {
  const reader = new BufferedReader(new ScriptedConn(["hel", "lo"]));
  await assert.rejects(readFixed(reader, 11), (e: unknown) => {
    assert.ok(e instanceof PrematureEndError);
    assert.match(e.message, /after 5 of 11 body bytes/);
    return true;
  });
});

// ---------------------------------------------------------------------------
// writeBody

function source(...chunks: (string | Uint8Array)[]) {
  return ReadableStream.from(
    chunks.map((c) => typeof c === "string" ? bytes(c) : c),
  ).getReader();
}

const writeCases: [
  string,
  (string | Uint8Array)[],
  WriteFraming,
  string | undefined,
  string,
][] = [
  [
    "length, exact",
    ["hel", "lo", " world"],
    { kind: "length", length: 11 },
    undefined,
    "hello world",
  ],
  [
    "length, with a first chunk",
    ["lo", "", " world"],
    { kind: "length", length: 11 },
    "hel",
    "hello world",
  ],
  ["length, zero bytes", [], { kind: "length", length: 0 }, undefined, ""],
  [
    "chunked",
    ["hello", " world"],
    { kind: "chunked" },
    undefined,
    "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
  ],
  [
    "chunked, empty chunks skipped",
    ["", "hello", "", ""],
    { kind: "chunked" },
    "",
    "5\r\nhello\r\n0\r\n\r\n",
  ],
  ["chunked, no chunks", [], { kind: "chunked" }, undefined, "0\r\n\r\n"],
  [
    "chunked, with a first chunk",
    ["b"],
    { kind: "chunked" },
    "a",
    "1\r\na\r\n1\r\nb\r\n0\r\n\r\n",
  ],
  [
    "chunked, hex sizes",
    ["x".repeat(26), "y".repeat(4096)],
    { kind: "chunked" },
    undefined,
    `1a\r\n${"x".repeat(26)}\r\n1000\r\n${"y".repeat(4096)}\r\n0\r\n\r\n`,
  ],
];

for (const [name, chunks, framing, first, expected] of writeCases) {
  Deno.test(`writeBody writes exact bytes: ${name}`, async () => {
    for (const maxWrite of [undefined, 1, 3]) {
      const conn = new ScriptedConn([], { maxWrite });
      await writeBody(
        conn,
        source(...chunks),
        framing,
        first === undefined ? undefined : bytes(first),
      );
      assert.equal(text(conn.written), expected, `maxWrite ${maxWrite}`);
    }
  });
}

Deno.test("writeBody rejects a length body with too many bytes before writing them", async () => {
  const conn = new ScriptedConn([]);
  const body = source("hello", "!", "more");
  await assert.rejects(
    writeBody(conn, body, { kind: "length", length: 5 }),
    (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.match(e.message, /more than the declared 5 bytes/);
      return true;
    },
  );
  assert.equal(text(conn.written), "hello");
  await body.cancel();
});

Deno.test("writeBody rejects a first chunk longer than the declared length", async () => {
  const conn = new ScriptedConn([]);
  const body = source();
  await assert.rejects(
    writeBody(conn, body, { kind: "length", length: 2 }, bytes("abc")),
    RangeError,
  );
  assert.equal(conn.written.length, 0);
  await body.cancel();
});

Deno.test("writeBody rejects a length body with too few bytes", async () => {
  const conn = new ScriptedConn([]);
  await assert.rejects(
    writeBody(conn, source("hello"), { kind: "length", length: 10 }),
    (e: unknown) => {
      assert.ok(e instanceof RangeError);
      assert.match(e.message, /5 of the declared 10 bytes/);
      return true;
    },
  );
  assert.equal(text(conn.written), "hello");
});

Deno.test("writeBody rejects with the body's error and writes no last chunk", async () => {
  const boom = new Error("source failed");
  let sent = false;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (!sent) {
        sent = true;
        controller.enqueue(bytes("abc"));
      } else {
        controller.error(boom);
      }
    },
  }).getReader();
  const conn = new ScriptedConn([]);
  await assert.rejects(
    writeBody(conn, body, { kind: "chunked" }),
    (e) => e === boom,
  );
  assert.equal(text(conn.written), "3\r\nabc\r\n");
});

Deno.test("writeBody rejects with the connection's write error", async () => {
  const broken = new Deno.errors.BrokenPipe("peer gone");
  const conn = new ScriptedConn([], { writeError: broken });
  const body = source("abc");
  await assert.rejects(
    writeBody(conn, body, { kind: "chunked" }),
    (e) => e === broken,
  );
  await body.cancel();
});

Deno.test("writeBody chunked output read back by bodyStream over a memory pair gives the same bytes", async () => {
  const parts = [bytes("first"), allBytes, new Uint8Array(70_000).fill(7)];
  const [a, b] = memPair({ maxWrite: 1000 });
  const writing = (async () => {
    await writeBody(a, source(...parts), { kind: "chunked" });
    await writeAll(a, NEXT);
    a.close();
  })();
  const reader = new BufferedReader(b);
  let doneCalls = 0;
  const stream = bodyStream(reader, { kind: "chunked" }, {
    limits: DEFAULT_LIMITS,
    onDone: () => doneCalls++,
  })!;
  const got = concat(...await Array.fromAsync(stream));
  await writing;
  assert.deepEqual(got, concat(...parts));
  assert.equal(doneCalls, 1);
  assert.deepEqual(concat(reader.take(Infinity), await readAll(b)), NEXT);
  b.close();
});

// ---------------------------------------------------------------------------
// The in-memory connection helpers themselves

Deno.test("memPair delivers writes in order and ends the peer's reads on close", async () => {
  const [a, b] = memPair({ maxWrite: 2 });
  const reading = readAll(b);
  await writeAll(a, bytes("hello"));
  await writeAll(a, bytes(" world"));
  a.close();
  assert.equal(text(await reading), "hello world");
  await assert.rejects(b.write(bytes("x")), Deno.errors.BrokenPipe);
  b.close();
});

Deno.test("memPair rejects a pending read when its own end closes", async () => {
  const [a, b] = memPair();
  const pending = a.read(new Uint8Array(4));
  a.close();
  await assert.rejects(pending, Deno.errors.Interrupted);
  await assert.rejects(a.read(new Uint8Array(4)), Deno.errors.BadResource);
  assert.equal(await b.read(new Uint8Array(4)), null);
  b.close();
});

Deno.test("memPair closeWrite ends the peer's reads but keeps the other direction", async () => {
  const [a, b] = memPair();
  await writeAll(a, bytes("ping"));
  a.closeWrite();
  assert.equal(text(await readAll(b)), "ping");
  await writeAll(b, bytes("pong"));
  b.close();
  assert.equal(text(await readAll(a)), "pong");
  a.close();
});

Deno.test("ScriptedConn splits pieces larger than the read buffer and then ends", async () => {
  const conn = new ScriptedConn(["abcdef", "", "gh"]);
  const buf = new Uint8Array(4);
  const got: string[] = [];
  for (let i = 0; i < 10; i++) {
    const n = await conn.read(buf);
    if (n === null) break;
    got.push(text(buf.subarray(0, n)));
  }
  assert.deepEqual(got, ["abcd", "ef", "gh"]);
  assert.equal(conn.reads, 3);
});

Deno.test("BufferedReader.shrink gives back a buffer a large message grew, keeping what it holds", async () => {
  const big = new Uint8Array(300_000).fill(7);
  const conn = new ScriptedConn([big, bytes("tail")]);
  const reader = new BufferedReader(conn);
  while (reader.buffered < big.length) assert.ok(await reader.fill());
  assert.ok(reader.buf.length >= big.length);
  reader.shrink(64 * 1024); // holds too much yet: kept
  assert.ok(reader.buf.length >= big.length);
  reader.consume(big.length - 3);
  reader.shrink(64 * 1024);
  assert.equal(reader.buf.length, 64 * 1024);
  assert.deepEqual([...reader.buf.subarray(reader.start, reader.end)], [
    7,
    7,
    7,
  ]);
  assert.ok(await reader.fill());
  assert.equal(text(reader.take(7)), "\x07\x07\x07tail");
});
