// Hubs found by DNS: a real DNS server (dnsmasq from Debian) on loopback
// answers a name with the addresses of two hubs on 127.0.0.2 and 127.0.0.3;
// a worker given that name serves both, and follows the answer as it
// changes (hosts file rewritten, dnsmasq reloaded with SIGHUP).

import assert from "node:assert/strict";
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

async function resolves(port: number, want: string[]): Promise<boolean> {
  try {
    const got = await Deno.resolveDns(NAME, "A", {
      nameServer: { ipAddr: "127.0.0.1", port },
    });
    return got.slice().sort().join() === want.slice().sort().join();
  } catch {
    return false;
  }
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
