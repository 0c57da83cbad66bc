// Hubs found by DNS: a real DNS server (dnsmasq from Debian) on loopback
// answers a name with the addresses of two hubs on 127.0.0.2 and 127.0.0.3;
// a worker given that name serves both, and follows the answer as it
// changes (hosts file rewritten, dnsmasq reloaded with SIGHUP).

import assert from "node:assert/strict";
import dgram from "node:dgram";
import { type HubServer, serveHub } from "../hub.ts";

import { deadline, waitFor } from "./_relay.ts";
import { connectWorker } from "./_hub.ts";

const DNSMASQ = "/usr/sbin/dnsmasq";
const NAME = "hubs.test";
const HANG = 20_000;

function haveDnsmasq(): boolean {
  try {
    return Deno.statSync(DNSMASQ).isFile;
  } catch {
    return false;
  }
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

interface Dns {
  port: number;
  /** Rewrites the hosts file to `addrs` for NAME and reloads dnsmasq. */
  answer(addrs: string[]): Promise<void>;
  stop(): Promise<void>;
}

// Whether NAME's A and AAAA records are `want`.
async function resolves(port: number, want: string[]): Promise<boolean> {
  const got: string[] = [];
  let answered = false;
  for (const type of ["A", "AAAA"] as const) {
    try {
      got.push(
        ...await Deno.resolveDns(NAME, type, {
          nameServer: { ipAddr: "127.0.0.1", port },
        }),
      );
      answered = true;
    } catch {
      // no records of this type (or no answer yet)
    }
  }
  return answered && got.sort().join() === want.slice().sort().join();
}

async function startDns(addrs: string[]): Promise<Dns> {
  const dir = await Deno.makeTempDir({ prefix: "pothead-dns-" });
  const hosts = `${dir}/hosts`;
  const write = (a: string[]) =>
    Deno.writeTextFile(hosts, a.map((ip) => `${ip} ${NAME}\n`).join(""));
  await write(addrs);
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = freePort();
    const child = new Deno.Command(DNSMASQ, {
      args: [
        "--no-daemon",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        `--addn-hosts=${hosts}`,
        "--local=/test/",
        `--port=${port}`,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--pid-file=",
        "--user=root",
        "--cache-size=0",
      ],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    let exited = false;
    const status = child.status.then((s) => {
      exited = true;
      return s;
    });
    // dnsmasq listens on TCP too: wait for that first, so that no UDP query
    // is lost to a server not yet bound (the resolver would wait seconds).
    let listening = false;
    for (let i = 0; i < 400 && !exited && !listening; i++) {
      try {
        (await Deno.connect({ hostname: "127.0.0.1", port })).close();
        listening = true;
      } catch {
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    let up = false;
    for (let i = 0; i < 20 && listening && !exited && !up; i++) {
      up = await resolves(port, addrs);
      if (!up) await new Promise((r) => setTimeout(r, 25));
    }
    if (!up) {
      if (!exited) child.kill("SIGKILL");
      await status;
      continue; // port taken in the meantime, most likely: try another
    }
    return {
      port,
      async answer(next) {
        await write(next);
        child.kill("SIGHUP");
        for (let i = 0; i < 200; i++) {
          if (await resolves(port, next)) return;
          await new Promise((r) => setTimeout(r, 25));
        }
        throw new Error(`dnsmasq did not start answering ${next}`);
      },
      async stop() {
        if (!exited) child.kill("SIGTERM");
        await status;
        await Deno.remove(dir, { recursive: true });
      },
    };
  }
  await Deno.remove(dir, { recursive: true });
  throw new Error("Cannot start dnsmasq on a free loopback port");
}

/** Two hubs, on 127.0.0.2 and 127.0.0.3, with the same worker port. */
function twoHubs(): [HubServer, HubServer] {
  for (let attempt = 0; attempt < 10; attempt++) {
    const a = serveHub({
      hostname: "127.0.0.2",
      port: 0,
      workerPort: 0,
      shutdownGrace: 500,
    });
    try {
      const b = serveHub({
        hostname: "127.0.0.3",
        port: 0,
        workerPort: a.workerAddr.port,
        shutdownGrace: 500,
      });
      return [a, b];
    } catch (error) {
      a.shutdown();
      if (!(error instanceof Deno.errors.AddrInUse)) throw error;
    }
  }
  throw new Error("Cannot find one worker port free on 127.0.0.2 and .3");
}

Deno.test({
  name:
    "a worker given a DNS name serves every hub it resolves to and withdraws from one that leaves the answer",
  ignore: !haveDnsmasq(),
  fn: async () => {
    const [a, b] = twoHubs();
    const port = a.workerAddr.port;
    const dns = await startDns(["127.0.0.2", "127.0.0.3"]).catch(async (e) => {
      await Promise.all([a.shutdown(), b.shutdown()]);
      throw e;
    });
    const errors: string[] = [];
    const worker = connectWorker(
      (req) => new Response(`served ${new URL(req.url).host}`),
      {
        hubs: [`${NAME}:${port}`],
        nameServer: { ipAddr: "127.0.0.1", port: dns.port },
        resolveInterval: 300,
        concurrency: 2,
        minBackoff: 10,
        maxBackoff: 100,
        onError: (e, ctx) => errors.push(`${ctx}: ${e}`),
      },
    );
    try {
      await deadline(
        (async () => {
          await waitFor(
            () => a.hub.stats.idle === 2 && b.hub.stats.idle === 2,
            "slots at both hubs",
            HANG,
          );
          for (const s of [a, b]) {
            const res = await fetch(
              `http://${s.addr.hostname}:${s.addr.port}/`,
            );
            assert.equal(res.status, 200);
            await res.body?.cancel();
          }

          // Drop 127.0.0.3 from the answer: the worker withdraws from it.
          await dns.answer(["127.0.0.2"]);
          await waitFor(
            () => b.hub.stats.slots === 0,
            "worker gone from the dropped hub",
            HANG,
          );
          // Connections given back after each request (several hubs)
          // come back to the remaining hub.
          await waitFor(() => a.hub.stats.idle === 2, "slots at A", HANG);
          assert.equal(b.hub.stats.failed, 0);

          // Put it back: the worker returns.
          await dns.answer(["127.0.0.2", "127.0.0.3"]);
          await waitFor(
            () => b.hub.stats.idle === 2,
            "worker back at the returning hub",
            HANG,
          );
          await waitFor(() => a.hub.stats.idle === 2, "slots at A", HANG);
        })(),
        HANG * 3,
        "DNS scenario",
      );
      // The A lookup always answered, so no resolve or dial error arose.
      assert.deepEqual(errors, []);
    } finally {
      worker.close();
      await worker.finished;
      await Promise.all([a.shutdown(), b.shutdown()]);
      await dns.stop();
    }
  },
});

Deno.test({
  name:
    "a worker reaching one dual-stack hub by a name with an A and an AAAA record serves it as one hub",
  ignore: !haveDnsmasq(),
  fn: async () => {
    // One hub listening on "::", which takes IPv4 too (dual-stack).
    const server = serveHub({
      hostname: "::",
      port: 0,
      workerPort: 0,
      shutdownGrace: 500,
    });
    const port = server.workerAddr.port;
    const dns = await startDns(["127.0.0.1", "::1"]).catch(async (e) => {
      await server.shutdown();
      throw e;
    });
    const dialed = new Set<string>();
    // Requests wait in the handler until the test lets them go.
    let entered = 0;
    let gate = Promise.withResolvers<void>();
    const worker = connectWorker(async () => {
      entered++;
      await gate.promise;
      return new Response("ok");
    }, {
      hubs: [`${NAME}:${port}`],
      nameServer: { ipAddr: "127.0.0.1", port: dns.port },
      resolveInterval: 50,
      concurrency: 1,
      // An id makes the worker handshake, which is where it learns the
      // hub's.
      workerId: "dual",
      minBackoff: 10,
      maxBackoff: 100,
      connect: (hostname, port) => {
        dialed.add(hostname);
        return Deno.connect({ hostname, port });
      },
    });
    const stats = () => server.hub.stats;
    const consumer = `http://127.0.0.1:${server.addr.port}/`;
    const ask = () => fetch(consumer).then((res) => res.text());
    try {
      await deadline(
        (async () => {
          await waitFor(
            () => dialed.size === 2 && stats().idle >= 1,
            "both addresses dialed",
            HANG,
          );
          assert.deepEqual([...dialed].sort(), ["127.0.0.1", "::1"]);
          // Each round: one request in the handler, a second one sent. The
          // worker's one permit is taken: served as two hubs, the second
          // goes to the other address's connection and is declined and
          // resent; served as one, it waits in the queue.
          for (let round = 0; round < 10; round++) {
            const first = ask();
            await waitFor(() => entered === 2 * round + 1, "first request");
            const second = ask();
            await waitFor(
              () => stats().queued === 1 && stats().busy === 1,
              "second request queued",
            );
            gate.resolve();
            assert.equal(await first, "ok");
            assert.equal(await second, "ok");
            gate = Promise.withResolvers<void>();
          }
          // At most one, that crossed the second address's connection as
          // it was handed back.
          const { retries } = stats();
          assert.ok(retries <= 1, `${retries} retries for 20 requests`);
          await waitFor(() => stats().slots === 1, "one connection", HANG);
          // Lookups go on (every 50 ms) without dialing the alias again.
          dialed.clear();
          await new Promise((r) => setTimeout(r, 300));
          assert.deepEqual([...dialed], []);
        })(),
        HANG * 2,
        "dual-stack scenario",
      );
    } finally {
      worker.close();
      await worker.finished;
      await server.shutdown();
      await dns.stop();
    }
  },
});

Deno.test("a worker closed while a DNS lookup is out abandons the lookup: nothing is left running", async () => {
  // A name server that takes queries and never answers.
  const silent = dgram.createSocket("udp4");
  let queries = 0;
  silent.on("message", () => queries++);
  await new Promise<void>((r) => silent.bind(0, "127.0.0.1", r));
  const errors: string[] = [];
  const worker = connectWorker(() => new Response("never"), {
    hubs: [`${NAME}:9`],
    nameServer: { ipAddr: "127.0.0.1", port: silent.address().port },
    resolveInterval: 0,
    onError: (error, where) => errors.push(`${where}: ${error}`),
  });
  try {
    await waitFor(() => queries > 0, "the lookup sent", HANG);
    worker.close();
    // The lookup would go on for its timeout; the test's op check sees it.
    await deadline(worker.finished, HANG, "the worker finished");
    // Abandoned on purpose: not reported as a failed lookup.
    assert.deepEqual(errors, []);
  } finally {
    worker.close();
    await worker.finished;
    await new Promise<void>((r) => silent.close(() => r()));
  }
});
