/**
 * Body framers: streams that read a framed body off a {@linkcode BufferedReader},
 * and writers that frame a stream onto a connection. Nothing buffers a whole
 * body: a reading stream pulls from the socket when its consumer reads, or
 * reads a bounded amount ahead of it (`readAhead`).
 *
 * @module
 */

import {
  encodeChunk,
  type Framing,
  type HeadLimits,
  isCrlf,
  LAST_CHUNK,
  parseChunkLine,
  parseTrailers,
} from "./_codec.ts";
import { type BufferedReader, type Connection, writeAll } from "./_io.ts";
import { type ReadAheadOptions, readAheadStream } from "./_readahead.ts";

const MAX_CHUNK = 64 * 1024;

/** Options for {@linkcode bodyStream}. */
export interface BodyStreamOptions {
  limits: HeadLimits;
  /** Largest body accepted, in bytes; exceeding it errors the stream. */
  maxBodySize?: number;
  /**
   * Called exactly once: with no argument when the body was read completely
   * and the reader sits at the next message, or with the reason it was not
   * (error, early end of stream, or cancellation by the consumer). `bytes`
   * is the number of body bytes read so far; `cancelled` is true when the
   * stream's reader cancelled it.
   */
  onDone(error: unknown | undefined, bytes: number, cancelled?: boolean): void;
  /**
   * Read ahead of the stream's reader (in memory, then on disk; see
   * `_readahead.ts`), so the peer can finish sending (and `onDone` come)
   * before a slow reader has taken it all. Without it, the stream reads
   * only when its reader asks.
   */
  readAhead?: ReadAheadOptions;
  /**
   * Called with true when the stream starts waiting for the next part of
   * the body from the peer, and with false when that wait ends: while it
   * waits, what the peer sent before has been read (the stream is not held
   * back by its reader).
   */
  onWait?: (waiting: boolean) => void;
}

/** Thrown into a body stream when the peer ends the stream too early. */
export class PrematureEndError extends Error {
  constructor(what: string) {
    super(`Cannot read body: connection closed ${what}`);
    this.name = "PrematureEndError";
  }
}

/**
 * Makes a stream of the body framed by `framing` on `reader`.
 * Returns `null` for `{ kind: "none" }` after calling `onDone()`.
 */
export function bodyStream(
  reader: BufferedReader,
  framing: Framing,
  options: BodyStreamOptions,
): ReadableStream<Uint8Array> | null {
  if (framing.kind === "none") {
    options.onDone(undefined, 0);
    return null;
  }
  const next = framing.kind === "length"
    ? lengthReader(reader, framing.length)
    : framing.kind === "chunked"
    ? chunkedReader(reader, options.limits)
    : closeReader(reader);
  const max = options.maxBodySize ?? Infinity;
  let total = 0;
  let done = false;
  const finish = (error?: unknown, cancelled = false) => {
    if (done) return;
    done = true;
    options.onDone(error, total, cancelled);
  };
  // The next chunk, counted against the limit; null at the end. Settles
  // the body (onDone) at the end or on an error.
  const onWait = options.onWait;
  const read = async (): Promise<Uint8Array | null> => {
    let chunk: Uint8Array | null;
    try {
      onWait?.(true);
      try {
        chunk = await next();
      } finally {
        onWait?.(false);
      }
      if (chunk !== null) {
        total += chunk.length;
        if (total > max) {
          throw new RangeError(
            `Cannot read body: larger than the limit of ${max} bytes`,
          );
        }
      }
    } catch (error) {
      finish(error);
      throw error;
    }
    if (chunk === null) finish();
    return chunk;
  };
  const ahead = options.readAhead;
  if (
    ahead !== undefined &&
    ((ahead.limit > 0 && ahead.budget.max > 0) || ahead.spill !== undefined)
  ) {
    return readAheadStream(
      read,
      ahead,
      (reason) => finish(reason ?? new Error("Body stream cancelled"), true),
    );
  }
  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      let chunk: Uint8Array | null;
      try {
        chunk = await read();
      } catch (error) {
        controller.error(error);
        return;
      }
      if (chunk === null) controller.close();
      else controller.enqueue(chunk);
    },
    cancel(reason) {
      finish(reason ?? new Error("Body stream cancelled"), true);
    },
  }, { highWaterMark: 0 });
}

/**
 * Reads a whole body of known, small length into memory (for bodies that fit
 * in one buffer, a `Uint8Array` body is far cheaper to hand to `Deno.serve`
 * than a stream).
 */
export async function readFixed(
  reader: BufferedReader,
  length: number,
): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let at = 0;
  while (at < length) {
    if (reader.buffered === 0 && !(await reader.fill())) {
      throw new PrematureEndError(`after ${at} of ${length} body bytes`);
    }
    const n = Math.min(length - at, reader.buffered);
    out.set(reader.buf.subarray(reader.start, reader.start + n), at);
    reader.consume(n);
    at += n;
  }
  return out;
}

type NextChunk = () => Promise<Uint8Array | null>;

function lengthReader(reader: BufferedReader, length: number): NextChunk {
  let left = length;
  return async () => {
    if (left === 0) return null;
    const chunk = await reader.readChunk(Math.min(left, MAX_CHUNK));
    if (chunk === null) {
      throw new PrematureEndError(
        `after ${length - left} of ${length} body bytes`,
      );
    }
    left -= chunk.length;
    return chunk;
  };
}

function closeReader(reader: BufferedReader): NextChunk {
  return () => reader.readChunk(MAX_CHUNK);
}

function chunkedReader(reader: BufferedReader, limits: HeadLimits): NextChunk {
  // left: bytes of the current chunk still to read; -1 before a size line.
  let left = -1;
  let finished = false;
  const more = async (where: string) => {
    if (!(await reader.fill())) throw new PrematureEndError(where);
  };
  return async () => {
    if (finished) return null;
    while (true) {
      if (left > 0) {
        const chunk = await reader.readChunk(Math.min(left, MAX_CHUNK));
        if (chunk === null) throw new PrematureEndError("inside a chunk");
        left -= chunk.length;
        return chunk;
      }
      if (left === 0) {
        while (reader.buffered < 2) await more("before a chunk's CRLF");
        if (!isCrlf(reader.buf, reader.start)) {
          throw new SyntaxError(
            "Cannot parse chunk: data not followed by CRLF",
          );
        }
        reader.consume(2);
        left = -1;
      }
      let line;
      while (
        (line = parseChunkLine(
          reader.buf,
          reader.start,
          reader.end,
          limits.maxChunkLineSize,
        )) === null
      ) {
        await more("inside a chunk-size line");
      }
      reader.consume(line.used);
      if (line.value > 0) {
        left = line.value;
        continue;
      }
      let trailers;
      while (
        (trailers = parseTrailers(
          reader.buf,
          reader.start,
          reader.end,
          limits,
        )) === null
      ) {
        await more("inside the trailer section");
      }
      reader.consume(trailers.used);
      finished = true;
      return null;
    }
  };
}

/** How {@linkcode writeBody} frames what it writes. */
export type WriteFraming = { kind: "length"; length: number } | {
  kind: "chunked";
};

/**
 * Copies `body` to `conn` with the given framing. A length-framed body must
 * produce exactly `length` bytes. Rejects on a write error or a body error;
 * the caller then closes the connection (the message is incomplete).
 *
 * @param first bytes already read from `body` that go out first.
 * @param sent body bytes the caller already wrote (with the head); they
 * count towards a length-framed body's `length`.
 */
export async function writeBody(
  conn: Connection,
  body: { read(): Promise<ReadableStreamReadResult<Uint8Array>> },
  framing: WriteFraming,
  first?: Uint8Array,
  sent = 0,
): Promise<void> {
  let written = sent;
  const put = async (chunk: Uint8Array) => {
    if (chunk.length === 0) return;
    written += chunk.length;
    if (framing.kind === "length") {
      if (written > framing.length) {
        throw new RangeError(
          `Cannot write body: more than the declared ${framing.length} bytes`,
        );
      }
      await writeAll(conn, chunk);
    } else {
      await writeAll(conn, encodeChunk(chunk));
    }
  };
  if (first !== undefined) await put(first);
  while (true) {
    const { done, value } = await body.read();
    if (done) break;
    await put(value);
  }
  if (framing.kind === "length") {
    if (written !== framing.length) {
      throw new RangeError(
        `Cannot write body: ${written} of the declared ${framing.length} bytes`,
      );
    }
  } else {
    await writeAll(conn, LAST_CHUNK);
  }
}
