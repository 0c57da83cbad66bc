/**
 * A tunnelled WebSocket: the consumer's socket (from `Deno.upgradeWebSocket`
 * on the hub) joined to the worker connection that answered the upgrade
 * with `101`. Messages go across whole; the hub answers the worker's pings
 * itself (`Deno.upgradeWebSocket` does the same for the consumer), and a
 * close on either side is passed to the other with its code and reason.
 *
 * Backpressure: a worker sending faster than the consumer reads is not read
 * while the socket's send buffer holds more than {@linkcode HIGH_WATER}; a
 * consumer sending faster than the worker reads is buffered up to
 * `maxBacklog` (and one message more) and then closed (a `WebSocket`
 * cannot be paused).
 *
 * @module
 */

import {
  type BufferedReader,
  type Connection,
  joinBytes,
  writeAll,
} from "./_io.ts";
import {
  closePayload,
  encodeFrame,
  type Frame,
  Op,
  parseClose,
  parseFrame,
  sendableCloseCode,
  WebSocketProtocolError,
} from "./_ws_frame.ts";
import { errorText } from "./_slot.ts";

/** Options for {@linkcode bridgeWebSocket}. */
export interface BridgeOptions {
  /** Largest message from the worker, in bytes (a larger one closes both). */
  maxMessage: number;
  /**
   * Bytes from the consumer waiting for the worker to read them before the
   * tunnel is closed (1008).
   */
  maxBacklog: number;
  /** Aborting it closes both sides with 1001 (the hub is going away). */
  signal?: AbortSignal;
  /**
   * Milliseconds to wait for the other side's answer to a close frame.
   * @default {5000}
   */
  closeTimeout?: number;
}

/** How a tunnel ended. */
export interface BridgeResult {
  /** Who closed first: the consumer, the worker, or the hub (an error, a limit, shutdown). */
  closedBy: "consumer" | "worker" | "hub";
  /** The close code passed on (1005 when the closing frame had none, 1006 when none came). */
  code: number;
  /** The close reason passed on, or the hub's reason for closing. */
  reason: string;
  /** Message payload bytes sent to the worker. */
  toWorker: number;
  /** Message payload bytes received from the worker. */
  fromWorker: number;
}

/** Above this many bytes in the consumer's send buffer, the worker is not read. */
export const HIGH_WATER = 1 << 20;

// The size a reader's buffer goes back to after a large message.
const SHRUNK = 64 * 1024;

const encoder = new TextEncoder();

// Small frames waiting behind a write share blocks of this size.
const BLOCK = 64 * 1024;

/**
 * Bytes waiting to go to the worker, in order. A frame that comes while
 * others wait is copied into a shared block rather than kept alone: a
 * Uint8Array of its own costs several times a small frame's bytes, so a
 * consumer flooding 100-byte messages made the hub hold ~100 MB for a
 * 16 MiB backlog (seen 12-06), and each went out in a write of its own.
 */
class Outbox {
  #chunks: Uint8Array[] = [];
  #head = 0;
  // The block being filled, and its bytes used.
  #tail: Uint8Array | null = null;
  #used = 0;

  /** Whether nothing waits. */
  get empty(): boolean {
    return this.#head === this.#chunks.length && this.#used === 0;
  }

  /** Queues `bytes` (kept as they are, or copied into a block). */
  push(bytes: Uint8Array): void {
    // Nothing waits (a trickle) or a large frame: as it is.
    if (this.empty || bytes.length > BLOCK / 4) {
      this.#seal();
      this.#chunks.push(bytes);
      return;
    }
    if (this.#tail === null || this.#used + bytes.length > BLOCK) {
      this.#seal();
      this.#tail = new Uint8Array(BLOCK);
    }
    this.#tail.set(bytes, this.#used);
    this.#used += bytes.length;
  }

  /** The next bytes to write, or null when nothing waits. */
  take(): Uint8Array | null {
    if (this.#head === this.#chunks.length) this.#seal();
    if (this.#head === this.#chunks.length) return null;
    const next = this.#chunks[this.#head++];
    if (this.#head === this.#chunks.length) {
      this.#chunks = [];
      this.#head = 0;
    }
    return next;
  }

  #seal(): void {
    if (this.#used > 0) this.#chunks.push(this.#tail!.subarray(0, this.#used));
    this.#tail = null;
    this.#used = 0;
  }
}

/**
 * Joins `socket` (not yet open: the `101` is still to go out) to the worker
 * connection `conn`, whose bytes after the `101` are in `reader`. Resolves
 * once both sides are closed; never rejects. Does not close `conn`'s slot:
 * the caller closes the connection afterwards.
 */
export function bridgeWebSocket(
  socket: WebSocket,
  conn: Connection,
  reader: BufferedReader,
  options: BridgeOptions,
): Promise<BridgeResult> {
  const { maxMessage, maxBacklog, signal, closeTimeout = 5000 } = options;
  const done = Promise.withResolvers<BridgeResult>();
  const result: BridgeResult = {
    closedBy: "hub",
    code: 1006,
    reason: "",
    toWorker: 0,
    fromWorker: 0,
  };
  // Who closed first, and why, is what the result reports.
  let decided = false;
  const firstClose = (
    by: BridgeResult["closedBy"],
    code: number,
    reason: string,
  ) => {
    if (decided) return;
    decided = true;
    result.closedBy = by;
    result.code = code;
    result.reason = reason;
  };
  // A close frame sent to the worker.
  let sentClose = false;
  let consumerClosed = false;
  let connClosed = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  // A 101 that never reached the consumer (it left) opens nothing.
  const opening = setTimeout(() => {
    if (socket.readyState !== WebSocket.CONNECTING) return;
    consumerClosed = true;
    firstClose("consumer", 1006, "");
    endConn();
  }, closeTimeout);

  // Writes to the worker go out in order, one at a time.
  const queue = new Outbox();
  let backlog = 0;
  let pumping: Promise<void> | null = null;
  const drainQueue = async () => {
    try {
      let chunk;
      while (!connClosed && (chunk = queue.take()) !== null) {
        await writeAll(conn, chunk);
        backlog -= chunk.length;
      }
    } catch {
      endConn();
    }
  };
  const pump = () => {
    if (pumping !== null) return;
    pumping = drainQueue().then(() => {
      pumping = null;
      // A frame queued after the loop saw the queue empty, before this ran,
      // found the pump still running and did not start it.
      if (!queue.empty && !connClosed) pump();
    });
  };
  const waitWritten = async () => {
    while (pumping !== null) await pumping;
  };
  const toWorker = (opcode: number, payload: Uint8Array) => {
    if (sentClose || connClosed) return;
    if (opcode === Op.close) sentClose = true;
    const mask = crypto.getRandomValues(new Uint8Array(4));
    const frame = encodeFrame(opcode, payload, mask);
    queue.push(frame);
    // Counted as the frame's bytes go out (see pump), head and all.
    backlog += frame.length;
    pump();
  };

  const finish = () => {
    if (!consumerClosed || !connClosed) return;
    clearTimeout(timer);
    clearTimeout(opening);
    signal?.removeEventListener("abort", onAbort);
    done.resolve(result);
  };
  const endConn = () => {
    if (connClosed) return;
    connClosed = true;
    try {
      conn.close();
    } catch {
      // already closed
    }
    // A consumer still connected hears that the worker is gone.
    closeConsumer(1011, "worker connection lost");
    finish();
  };
  const closeConsumer = (code: number | undefined, reason: string) => {
    if (consumerClosed) return;
    if (socket.readyState === WebSocket.CONNECTING) {
      // Not open yet: close once it is (closing now would fail the 101).
      socket.addEventListener("open", () => closeConsumer(code, reason), {
        once: true,
      });
      return;
    }
    if (socket.readyState !== WebSocket.OPEN) return;
    try {
      if (code === undefined) socket.close();
      else socket.close(code, reason);
    } catch {
      socket.close();
    }
    // A consumer that never answers is not waited for (Deno's own end, by
    // its idle timeout, comes minutes later).
    armTimeout();
  };
  // The hub closes: both sides hear `code`, and the worker gets time to answer.
  const closeBoth = (code: number, reason: string) => {
    firstClose("hub", code, reason);
    closeConsumer(code, reason);
    toWorker(Op.close, closePayload(code, reason));
    armTimeout();
  };
  const armTimeout = () => {
    timer ??= setTimeout(() => {
      endConn();
      // A consumer that never answers our close: Deno ends it on its own
      // close timeout; the tunnel need not wait for that.
      consumerClosed = true;
      finish();
    }, closeTimeout);
  };
  const onAbort = () => closeBoth(1001, "hub is shutting down");

  socket.binaryType = "arraybuffer";
  socket.onmessage = (event) => {
    const data = event.data;
    const payload = typeof data === "string"
      ? encoder.encode(data)
      : new Uint8Array(data as ArrayBuffer);
    result.toWorker += payload.length;
    // What was still waiting when it came: one large message alone is no
    // sign of a worker that does not read (Deno bounds its size).
    const waiting = backlog;
    toWorker(typeof data === "string" ? Op.text : Op.binary, payload);
    // Past the limit by more than a frame's head (up to 14 bytes): one
    // message of the largest size waiting is no sign of a worker that does
    // not read.
    if (waiting > maxBacklog + 14) {
      closeBoth(
        1008,
        `worker is not reading: over ${maxBacklog} bytes waiting for it`,
      );
    }
  };
  socket.onerror = () => {}; // the close event follows
  socket.onclose = (event) => {
    consumerClosed = true;
    firstClose("consumer", event.code, event.reason);
    // 1005 and 1006 say that no code came, which goes on as no code.
    toWorker(
      Op.close,
      closePayload(
        sendableCloseCode(event.code) ? event.code : undefined,
        event.reason,
      ),
    );
    armTimeout();
    finish();
  };
  socket.onopen = () => {
    clearTimeout(opening);
    readWorker();
  };
  if (signal?.aborted) onAbort();
  else signal?.addEventListener("abort", onAbort, { once: true });

  // Worker to consumer: frames until the close, reassembled into messages.
  const readWorker = async () => {
    let parts: Uint8Array[] = [];
    let size = 0;
    let kind = 0; // the opcode of the message in progress, 0 for none
    // ignoreBOM keeps a leading U+FEFF: it is part of the text, which a
    // decoder would otherwise drop as a byte order mark.
    const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
    try {
      while (!connClosed) {
        let parsed;
        while (
          (parsed = parseFrame(
            reader.buf,
            reader.start,
            reader.end,
            maxMessage - size,
          )) === null
        ) {
          if (!(await reader.fill())) {
            firstClose(
              "worker",
              1006,
              "worker closed the connection without a close frame",
            );
            endConn();
            return;
          }
        }
        reader.consume(parsed.used);
        const frame: Frame = parsed.frame;
        if (frame.opcode === Op.ping) {
          toWorker(Op.pong, frame.payload);
          continue;
        }
        if (frame.opcode === Op.pong) continue;
        if (frame.opcode === Op.close) {
          // A bad close frame throws, and the worker is told why below.
          const { code, reason } = parseClose(frame.payload);
          firstClose("worker", code ?? 1005, reason);
          closeConsumer(code, reason);
          // Echo it (RFC 6455 §5.5.1); the worker then closes the TCP
          // connection, or we do once the echo is out.
          toWorker(Op.close, frame.payload.subarray(0, 2));
          await waitWritten();
          endConn();
          return;
        }
        if (frame.opcode === Op.continuation ? kind === 0 : kind !== 0) {
          throw new WebSocketProtocolError(
            1002,
            kind === 0
              ? "continuation frame outside a message"
              : "new message inside a fragmented one",
          );
        }
        if (frame.opcode !== Op.continuation) kind = frame.opcode;
        parts.push(frame.payload);
        size += frame.payload.length;
        if (!frame.fin) continue;
        const whole = parts.length === 1 ? parts[0] : joinBytes(parts, size);
        result.fromWorker += size;
        if (!consumerClosed && socket.readyState === WebSocket.OPEN) {
          socket.send(kind === Op.text ? decoder.decode(whole) : whole);
        }
        parts = [];
        size = 0;
        kind = 0;
        // A large message grew the buffer: the tunnel may last for hours.
        reader.shrink(SHRUNK);
        // A slow consumer slows the worker down (TCP backpressure). Deno's
        // WebSocket has no event for a drained buffer: it is looked at
        // again after 1 ms, then less and less often (up to every 100 ms),
        // so that tunnels whose consumers stopped reading cost no CPU.
        for (
          let pause = 1;
          socket.bufferedAmount > HIGH_WATER && !consumerClosed && !connClosed;
          pause = Math.min(pause * 2, 100)
        ) {
          await new Promise((r) => setTimeout(r, pause));
        }
      }
    } catch (error) {
      if (connClosed) return;
      const why = errorText(error);
      if (
        !(error instanceof WebSocketProtocolError) &&
        !(error instanceof TypeError)
      ) {
        // The connection failed (a reset), not the protocol.
        firstClose("worker", 1006, `worker connection lost: ${why}`);
        endConn();
        return;
      }
      // A TypeError is the fatal decoder's: text that is not UTF-8.
      const code = error instanceof WebSocketProtocolError ? error.code : 1007;
      firstClose("hub", 1011, `worker broke the WebSocket protocol: ${why}`);
      closeConsumer(1011, "worker broke the WebSocket protocol");
      toWorker(Op.close, closePayload(code, why));
      await waitWritten();
      endConn();
    }
  };
  return done.promise;
}
