/**
 * A consumer's WebSocket for tests: Deno's client, with its messages kept
 * in arrival order and every wait bounded.
 *
 * @module
 */
import { deadline } from "./_relay.ts";

/** A consumer's WebSocket with its messages and its close in order. */
export interface WsClient {
  ws: WebSocket;
  /** The next message (in arrival order). */
  next(): Promise<string | Uint8Array>;
  /** Resolves with the close event. */
  closed: Promise<CloseEvent>;
}

/**
 * Opens a WebSocket to `url`; rejects with "WebSocket failed" if it does
 * not open, or after `timeout` ms (each message wait is bounded the same).
 */
export function wsClient(
  url: string,
  protocols?: string[],
  timeout = 10_000,
): Promise<WsClient> {
  const ws = new WebSocket(url, protocols);
  ws.binaryType = "arraybuffer";
  const inbox: (string | Uint8Array)[] = [];
  const waiting: ((m: string | Uint8Array) => void)[] = [];
  ws.onmessage = (e) => {
    const m = typeof e.data === "string"
      ? e.data
      : new Uint8Array(e.data as ArrayBuffer);
    const w = waiting.shift();
    if (w) w(m);
    else inbox.push(m);
  };
  const closed = new Promise<CloseEvent>((r) => ws.onclose = r);
  return deadline(
    new Promise((resolve, reject) => {
      ws.onopen = () =>
        resolve({
          ws,
          next: () =>
            deadline(
              inbox.length > 0
                ? Promise.resolve(inbox.shift()!)
                : new Promise((r) => waiting.push(r)),
              timeout,
              "a WebSocket message",
            ),
          closed,
        });
      ws.onerror = (e) =>
        reject(new Error(`WebSocket failed: ${(e as ErrorEvent).message}`));
    }),
    timeout,
    "the WebSocket to open",
  );
}
