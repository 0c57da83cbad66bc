// The shutdown cut of a spilled response while its consumer
// reads slowly (a spill take in flight), on real sockets.
import assert from "node:assert/strict";
import { deadline, waitFor } from "./_wait.ts";
import { startHub, startWorker } from "./_hub.ts";

const CHUNK = 64 * 1024;
const CHUNKS = 256; // 16 MiB

Deno.test("a spilled response cut by shutdown while its consumer reads slowly: nothing held, no file left", async () => {
  const dir = await Deno.makeTempDir();
  const server = startHub({
    responseBuffer: 256 * 1024,
    responseSpillDir: dir,
    shutdownGrace: 1500,
  });
  const worker = startWorker(server, () => {
    let i = 0;
    return new Response(
      new ReadableStream<Uint8Array>({
        pull(c) {
          if (i === CHUNKS) c.close();
          else c.enqueue(new Uint8Array(CHUNK).fill(i++ & 0xff));
        },
      }, { highWaterMark: 0 }),
      { headers: { "content-length": String(CHUNKS * CHUNK) } },
    );
  });
  let res: Response | undefined;
  try {
    await waitFor(() => server.hub.stats.idle === 1, "idle", 10_000);
    res = await fetch(`http://127.0.0.1:${server.addr.port}/big`);
    await waitFor(
      () => server.hub.stats.responseSpilled > 0 && server.hub.stats.idle === 1,
      "spilled, slot free",
      20_000,
    );
    worker.close();
    await worker.finished;
    const reader = res.body!.getReader();
    let got = 0;
    let failed: unknown = null;
    const reading = (async () => {
      try {
        while (true) {
          const r = await reader.read();
          if (r.done) break;
          got += r.value.length;
          await new Promise((go) => setTimeout(go, 20));
        }
      } catch (e) {
        failed = e;
      }
    })();
    await deadline(server.shutdown(), 20_000, "shutdown");
    assert.equal(server.hub.stats.responseBuffered, 0);
    assert.equal(server.hub.stats.responseSpilled, 0);
    await deadline(reading, 20_000, "reader ends");
    assert.ok(failed !== null, `reader got ${got} bytes and no error`);
    assert.ok(got < CHUNKS * CHUNK);
    assert.deepEqual([...Deno.readDirSync(dir)], []);
  } finally {
    await res?.body?.cancel().catch(() => {});
    worker.close();
    await worker.finished;
    await server.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
