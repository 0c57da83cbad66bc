// The library as an application embeds it: the hub's fetch handed to
// Deno.serve on its own, stats kept by the caller, user callbacks that
// throw, options written as constants. Real sockets throughout; nothing
// asserts on durations (every wait has a hang guard).

import assert from "node:assert/strict";
import { deadline, waitFor } from "./_wait.ts";
import { connectWorker, startHub, startWorker } from "./_hub.ts";
import { Hub, type HubLogRecord, type Route } from "../hub.ts";

const HANG_GUARD = 20_000;

async function text(url: string): Promise<[number, string]> {
  const res = await deadline(fetch(url), HANG_GUARD, `GET ${url}`);
  return [res.status, await res.text()];
}

Deno.test("hub.fetch serves as a fetch handler on its own, unbound", async () => {
  const server = startHub();
  const worker = startWorker(server, () => new Response("from worker"));
  // The README's "hub inside your own app", with the method passed as is.
  const app = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    server.hub.fetch,
  );
  try {
    const { fetch: handle } = server.hub;
    const direct = await deadline(
      handle(new Request("http://hub/direct")),
      HANG_GUARD,
      "unbound fetch",
    );
    assert.deepEqual([direct.status, await direct.text()], [
      200,
      "from worker",
    ]);
    assert.deepEqual(await text(`http://127.0.0.1:${app.addr.port}/x`), [
      200,
      "from worker",
    ]);
  } finally {
    await app.shutdown();
    await worker.drain();
    await server.shutdown();
  }
});

Deno.test("stats are snapshots: a caller changing one changes nothing in the hub", async () => {
  const server = startHub();
  const worker = connectWorker(() => new Response("ok"), {
    port: server.workerAddr.port,
    workerId: "w1",
    labels: { gpu: "a100" },
  });
  try {
    await waitFor(
      () => server.hub.stats.workers.length === 1,
      "the worker attached",
    );
    const first = server.hub.stats;
    first.workers[0].labels.gpu = "changed";
    first.workers[0].labels.extra = "added";
    assert.deepEqual(server.hub.stats.workers[0].labels, { gpu: "a100" });
  } finally {
    await worker.drain();
    await server.shutdown();
  }
});

Deno.test("a throwing onLog or onAccess breaks neither the requests nor shutdown", async () => {
  let logged = 0;
  let accessed = 0;
  const server = startHub({
    onLog(_record: HubLogRecord) {
      logged++;
      throw new Error("log sink closed");
    },
    onAccess() {
      accessed++;
      throw new Error("access log full");
    },
  });
  const worker = startWorker(server, (req) => {
    if (new URL(req.url).pathname === "/throw") throw new Error("handler");
    return new Response("ok");
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    assert.deepEqual(await text(`${base}/a`), [200, "ok"]);
    assert.equal((await text(`${base}/throw`))[0], 500);
    assert.deepEqual(await text(`${base}/b`), [200, "ok"]);
    assert.equal(accessed, 3);
    // The onAccess failures were reported to onLog (which threw too).
    assert.ok(logged >= 3, `onLog called ${logged} times`);
  } finally {
    await worker.drain();
    await deadline(server.shutdown(), HANG_GUARD, "shutdown");
  }
});

Deno.test("a throwing onError or onConnect does not stop the worker serving", async () => {
  const server = startHub();
  const contexts: string[] = [];
  const worker = connectWorker((req) => {
    if (new URL(req.url).pathname === "/throw") throw new Error("handler");
    return new Response("ok");
  }, {
    port: server.workerAddr.port,
    minBackoff: 10,
    maxBackoff: 100,
    onError(_error, context) {
      contexts.push(context);
      throw new Error("error sink closed");
    },
    onConnect() {
      throw new Error("connect hook failed");
    },
  });
  const base = `http://127.0.0.1:${server.addr.port}`;
  try {
    assert.deepEqual(await text(`${base}/a`), [200, "ok"]);
    assert.equal((await text(`${base}/throw`))[0], 500);
    assert.deepEqual(await text(`${base}/b`), [200, "ok"]);
    assert.deepEqual(await text(`${base}/c`), [200, "ok"]);
    assert.ok(contexts.includes("onConnect"), contexts.join());
    assert.ok(contexts.includes("handler"), contexts.join());
  } finally {
    await deadline(worker.drain(), HANG_GUARD, "drain");
    await server.shutdown();
  }
});

Deno.test("option arrays may be readonly (configuration written as constants)", async () => {
  // Type-checked: each of these was a mutable array type.
  const routes: readonly Route[] = [{ pool: "img", pathPrefix: "/img/" }];
  const tokens = ["token-0123456789"] as const;
  const proxies = ["10.0.0.0/8"] as const;
  const hub = new Hub({ routes, workerTokens: tokens });
  const other = new Hub({ trustedProxies: proxies });
  const hubs = ["127.0.0.1:1"] as const;
  const worker = connectWorker(() => new Response(""), {
    hubs,
    caCerts: [] as readonly string[],
    minBackoff: 10,
  });
  worker.close();
  await worker.finished;
  await hub.shutdown(0);
  await other.shutdown(0);
});

Deno.test("invalid shutdownGrace or resolveInterval, and a token function that throws, are option errors", () => {
  for (const shutdownGrace of [-5, NaN]) {
    assert.throws(
      () => startHub({ shutdownGrace }),
      (e: unknown) =>
        e instanceof RangeError && /"shutdownGrace"/.test(e.message),
      String(shutdownGrace),
    );
  }
  assert.throws(
    () => connectWorker(() => new Response(), { resolveInterval: -1 }),
    (e: unknown) =>
      e instanceof RangeError && /"resolveInterval"/.test(e.message),
  );
  assert.throws(
    () =>
      connectWorker(() => new Response(), {
        token: () => {
          throw new Error("vault sealed");
        },
      }),
    (e: unknown) =>
      e instanceof TypeError && /"token".*vault sealed/.test(e.message),
  );
});

Deno.test("serveHub and connectWorker take their listener off the caller's signal once they have ended", async () => {
  // A signal that outlives them, counting its listeners.
  class Counted extends EventTarget {
    listeners = 0;
    override addEventListener(
      ...args: Parameters<EventTarget["addEventListener"]>
    ): void {
      this.listeners++;
      super.addEventListener(...args);
    }
    override removeEventListener(
      ...args: Parameters<EventTarget["removeEventListener"]>
    ): void {
      this.listeners--;
      super.removeEventListener(...args);
    }
  }
  const controller = new AbortController();
  const counted = new Counted();
  const signal = Object.assign(counted, {
    get aborted() {
      return controller.signal.aborted;
    },
  }) as unknown as AbortSignal;
  const server = startHub({ signal });
  const worker = connectWorker(() => new Response("ok"), {
    port: server.workerAddr.port,
    signal,
    minBackoff: 10,
    maxBackoff: 100,
  });
  assert.equal(counted.listeners, 2);
  await deadline(worker.drain(), HANG_GUARD, "the worker to drain");
  await deadline(server.shutdown(), HANG_GUARD, "the hub to shut down");
  await deadline(server.finished, HANG_GUARD, "the hub to finish");
  await waitFor(() => counted.listeners === 0, "the listeners taken off");
});

Deno.test("a worker's own close() aborts a running handler's signal as its own doing, not the hub's", async () => {
  const server = startHub();
  const { promise: reason, resolve } = Promise.withResolvers<unknown>();
  const { promise: started, resolve: start } = Promise.withResolvers<void>();
  const worker = startWorker(server, (req) => {
    start();
    return new Promise<Response>((answer) =>
      req.signal.addEventListener("abort", () => {
        resolve(req.signal.reason);
        answer(new Response("late"));
      })
    );
  });
  const answer = fetch(`http://127.0.0.1:${server.addr.port}/`).then(
    (res) => res.body?.cancel(),
    () => {},
  );
  try {
    await deadline(started, HANG_GUARD, "the handler to start");
    worker.close();
    const why = await deadline(reason, HANG_GUARD, "the signal to abort");
    assert.doesNotMatch(String(why), /Hub closed/);
  } finally {
    await deadline(worker.finished, HANG_GUARD, "the worker to end");
    await server.shutdown();
    await answer;
  }
});
