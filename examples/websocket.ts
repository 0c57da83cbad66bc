/**
 * A WebSocket session handler: each WebSocket is one session that holds a
 * worker slot for its whole life, the way a live transcription or an
 * inference stream would. Every text message is "worked on" (upper-cased,
 * after `?ms=` milliseconds, default 0) and answered with the process that
 * did it; `bye` ends the session with close code 1000, and a worker that
 * drains ends it with 1001. Plain requests get a line saying to use a
 * WebSocket.
 *
 * Under POTHEAD (a hub listening for workers on 127.0.0.1:4040), one session
 * at a time per worker:
 *
 * ```sh
 * deno run --allow-net --allow-env --allow-read worker.ts \
 *   --connect 127.0.0.1:4040 --concurrency 1 examples/websocket.ts
 * ```
 *
 * then, from a browser console or Deno:
 * `new WebSocket("ws://localhost:8080/session")`.
 *
 * As a plain server: `deno serve examples/websocket.ts`.
 *
 * @module
 */

export default {
  fetch(req: Request): Response {
    if (req.headers.get("upgrade")?.toLowerCase() !== "websocket") {
      return new Response("Open a WebSocket to this URL\n", {
        status: 426,
        headers: { upgrade: "websocket", "content-type": "text/plain" },
      });
    }
    const ms = Number(new URL(req.url).searchParams.get("ms") ?? 0);
    const { socket, response } = Deno.upgradeWebSocket(req);
    // The worker drains (a deploy, a scale-down): the consumer should
    // reconnect elsewhere.
    req.signal.addEventListener("abort", () => {
      if (socket.readyState === WebSocket.OPEN) {
        socket.close(1001, "worker going away");
      }
    });
    // One message at a time, in order, as a non-concurrent job would.
    let work = Promise.resolve();
    socket.onmessage = (event) => {
      work = work.then(async () => {
        if (event.data === "bye") {
          socket.close(1000, "session over");
          return;
        }
        if (ms > 0) await new Promise((r) => setTimeout(r, ms));
        if (socket.readyState !== WebSocket.OPEN) return;
        socket.send(`${String(event.data).toUpperCase()} (pid ${Deno.pid})`);
      });
    };
    return response;
  },
} satisfies Deno.ServeDefaultExport;
