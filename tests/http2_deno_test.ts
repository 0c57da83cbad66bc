// What Deno 2.9.6's HTTP/2 server does with a stream reset in the middle of
// a request body of unknown length (no content-length: h2 allows it), and
// what that does to the hub. Raw h2c frames, so the reset is certain.
//
// Deno: the body stream ends as if the body were whole (`done`, no error),
// and the request's signal does not abort while the handler has not
// answered. With a content-length the short body is an error. So the hub
// cannot tell a consumer's reset from the body's end, and relays the
// truncated body to its worker as complete (chunked, with its last chunk).

import assert from "node:assert/strict";
import { startHub, startWorker } from "./_hub.ts";
import { waitFor } from "./_wait.ts";
import { RawH2, requestHead } from "./_h2_raw.ts";

const KNOWN_BUGS = Deno.env.get("POTHEAD_KNOWN_BUGS") === "1";

const post = (path: string, extra: [string, string][] = []) =>
  requestHead("POST", path, extra);

Deno.test({
  name:
    "Deno.serve h2 (pinned): RST_STREAM after a DATA frame of a body without length ends the body as done, and the signal stays unaborted",
  fn: async () => {
    const outcomes: string[] = [];
    const handlers: Promise<void>[] = [];
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
    }, (req) => {
      const p = (async () => {
        const reader = req.body!.getReader();
        let n = 0;
        try {
          while (true) {
            const { done, value } = await reader.read();
            if (done) break;
            n += value.length;
          }
          // Give an abort every chance to arrive first.
          await new Promise((r) => setTimeout(r, 200));
          outcomes.push(`done ${n} aborted=${req.signal.aborted}`);
        } catch (e) {
          outcomes.push(`error ${(e as Error).name}`);
        }
      })();
      handlers.push(p);
      return p.then(() => new Response("ok"));
    });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await h2.windowUpdate(0, 2 ** 30);
      for (let i = 0; i < 5; i++) {
        const id = await h2.request(post("/x"), false);
        await h2.data(id, new Uint8Array(100), false);
        await new Promise((r) => setTimeout(r, 20));
        await h2.reset(id);
      }
      await waitFor(() => handlers.length === 5, "handlers");
      await Promise.all(handlers);
      // Deno 2.9.6. Once this fails, Deno reports the reset: re-check the
      // hub test below, which should then pass.
      assert.deepEqual(outcomes, Array(5).fill("done 100 aborted=false"));
    } finally {
      h2.close();
      await h2.done;
      await server.shutdown();
    }
  },
});

Deno.test({
  name:
    "hub over h2 (known bug, Deno's): a consumer's reset mid-upload of unknown length never reaches a worker as a whole body",
  ignore: !KNOWN_BUGS,
  fn: async () => {
    const server = startHub({ queueTimeout: 10_000, shutdownGrace: 200 });
    const whole: number[] = [];
    const worker = startWorker(server, async (req) => {
      let n = 0;
      try {
        for await (const c of req.body!) n += c.length;
        whole.push(n);
      } catch {
        // cut: as it should be
      }
      return new Response("ok");
    }, { concurrency: 2 });
    const h2 = await RawH2.connect(server.addr.port);
    try {
      await waitFor(() => server.hub.stats.idle === 2, "worker connected");
      await h2.windowUpdate(0, 2 ** 30);
      for (let i = 0; i < 10; i++) {
        const id = await h2.request(post(`/up${i}`), false);
        await h2.data(id, new Uint8Array(100), false);
        await new Promise((r) => setTimeout(r, 20));
        await h2.data(id, new Uint8Array(100), false);
        await h2.reset(id);
      }
      await waitFor(
        () => server.hub.stats.busy === 0 && server.hub.stats.queued === 0,
        "settled",
      );
      assert.deepEqual(whole, [], "bodies a worker took as whole");
    } finally {
      h2.close();
      await h2.done;
      worker.close();
      await worker.finished;
      await server.shutdown();
    }
  },
});
