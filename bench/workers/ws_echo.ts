/**
 * The WebSocket benchmark's handler: upgrades every request and echoes each
 * message back as it came (text as text, binary as binary). Served by the
 * worker runner behind the hub, or directly by `bench/workers/serve.ts`.
 *
 * @module
 */

export default {
  fetch(req: Request): Response {
    const { socket, response } = Deno.upgradeWebSocket(req);
    socket.binaryType = "arraybuffer";
    socket.onmessage = (e) => socket.send(e.data);
    return response;
  },
} satisfies Deno.ServeDefaultExport;
