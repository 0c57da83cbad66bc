/**
 * Server-sent events: `?n=` events (default 5) one every `?interval=`
 * milliseconds (default 200), the first at once, then the stream closes. It
 * stops early when the consumer goes away (`req.signal` aborts or the body
 * is cancelled).
 *
 * Under POTHEAD (a hub listening for workers on 127.0.0.1:4040):
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read worker.ts \
 *   --connect 127.0.0.1:4040 examples/sse.ts
 * curl -N 'localhost:8080/?n=5&interval=200'
 * ```
 *
 * As a plain server: `deno serve examples/sse.ts`.
 *
 * @module
 */

const MAX_EVENTS = 100_000;
const MAX_INTERVAL = 60_000;

function integer(url: URL, name: string, fallback: number, max: number) {
  const text = url.searchParams.get(name);
  if (text === null) return fallback;
  if (!/^[0-9]+$/.test(text) || Number(text) > max) {
    throw new RangeError(
      `Invalid ${name}: expected an integer 0..${max}, got "${text}"`,
    );
  }
  return Number(text);
}

export default {
  fetch(req: Request): Response {
    const url = new URL(req.url);
    let n: number;
    let interval: number;
    try {
      n = integer(url, "n", 5, MAX_EVENTS);
      interval = integer(url, "interval", 200, MAX_INTERVAL);
    } catch (error) {
      return new Response(`${(error as Error).message}\n`, {
        status: 400,
        headers: { "content-type": "text/plain" },
      });
    }
    const encoder = new TextEncoder();
    let timer: ReturnType<typeof setTimeout> | undefined;
    let sent = 0;
    let onAbort = () => {};
    const stop = () => {
      clearTimeout(timer);
      req.signal.removeEventListener("abort", onAbort);
    };
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        const tick = () => {
          sent++;
          const data = JSON.stringify({ n: sent, of: n, pid: Deno.pid });
          controller.enqueue(
            encoder.encode(`id: ${sent}\nevent: tick\ndata: ${data}\n\n`),
          );
          if (sent < n) {
            timer = setTimeout(tick, interval);
          } else {
            stop();
            controller.close();
          }
        };
        onAbort = () => {
          stop();
          try {
            controller.close();
          } catch {
            // already closed or cancelled
          }
        };
        if (req.signal.aborted || n === 0) {
          controller.close();
          return;
        }
        req.signal.addEventListener("abort", onAbort, { once: true });
        tick();
      },
      cancel: stop,
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      },
    });
  },
} satisfies Deno.ServeDefaultExport;
