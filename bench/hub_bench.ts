/**
 * Micro-benchmark of the hub's own JavaScript per request, without sockets:
 * `deno bench bench/hub_bench.ts`. A {@linkcode Hub} holds in-memory worker
 * connections that answer every request head at once with a fixed small
 * response, so a round trip through `hub.fetch` is the hub's work on the
 * request (queue, head encoding, response parsing, the `Response` it
 * builds) plus a `Request` and reading the answer, which the baseline
 * measures alone. The difference is the hub's JavaScript cost per request,
 * which is steady from run to run where whole-process CPU is not. A second
 * group sends 16 requests at once through 2 connections, so that 14 take
 * the queue, first come first served and with `fairBy` over 4 tenants, in
 * turn and by worker time (`fairShare: "time"`).
 *
 * @module
 */

import { Hub } from "../hub.ts";
import type { Connection } from "../_io.ts";

const RESPONSE = new TextEncoder().encode(
  "HTTP/1.1 200 OK\r\ncontent-type: text/plain;charset=UTF-8\r\n" +
    "vary: Accept-Encoding\r\ncontent-length: 5\r\n" +
    "date: Sat, 05 Dec 2026 01:00:00 GMT\r\n\r\nhello",
);

// What a browser-ish consumer sends.
const HEADERS = {
  "user-agent": "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
  accept: "application/json, text/plain, */*",
  "accept-language": "en-GB,en;q=0.7",
  "accept-encoding": "gzip, deflate, br",
};

/**
 * A worker connection that answers each request it is sent (a GET head, in
 * one write) with {@linkcode RESPONSE}. Reads resolve from a microtask, not
 * from the event loop as a socket's do.
 */
class AnsweringConn implements Connection {
  #queued = 0;
  #waiter: { p: Uint8Array; resolve: (n: number | null) => void } | null = null;
  #closed = false;

  read(p: Uint8Array): Promise<number | null> {
    if (this.#closed) return Promise.resolve(null);
    if (this.#queued > 0) {
      this.#queued--;
      p.set(RESPONSE);
      return Promise.resolve(RESPONSE.length);
    }
    return new Promise((resolve) => this.#waiter = { p, resolve });
  }

  write(p: Uint8Array): Promise<number> {
    const waiter = this.#waiter;
    if (waiter !== null) {
      this.#waiter = null;
      waiter.p.set(RESPONSE);
      waiter.resolve(RESPONSE.length);
    } else this.#queued++;
    return Promise.resolve(p.length);
  }

  close(): void {
    this.#closed = true;
    this.#waiter?.resolve(null);
    this.#waiter = null;
  }
}

const hub = new Hub({ handshakeWait: 0, headTimeout: 0 });
const conns = [new AnsweringConn(), new AnsweringConn()];
for (const conn of conns) hub.addWorker(conn, "127.0.0.1:40000");
while (hub.stats.idle < conns.length) {
  await new Promise((resolve) => setTimeout(resolve, 10));
}

Deno.bench("baseline: a Request, and reading a 5-byte Response", {
  group: "round trip",
  baseline: true,
}, async () => {
  new Request("http://hub.example/v1/items?page=2", { headers: HEADERS });
  await new Response("hello").arrayBuffer();
});

Deno.bench("hub.fetch round trip to an in-memory worker", {
  group: "round trip",
}, async () => {
  const res = await hub.fetch(
    new Request("http://hub.example/v1/items?page=2", { headers: HEADERS }),
    { remoteAddr: { hostname: "203.0.113.7" } },
  );
  if (res.status !== 200) throw new Error(`status ${res.status}`);
  await res.arrayBuffer();
});

// The queued path: 16 requests at once through 2 slots, so 14 wait, first
// come first served or (fairBy) over 4 tenants, in turn or by time.
// (Deno.bench awaits only async functions.)
const TENANTS = ["a", "b", "c", "d"];
async function burstHub(
  fair: "off" | "requests" | "time",
): Promise<[Hub, AnsweringConn[]]> {
  const hub = new Hub({
    handshakeWait: 0,
    headTimeout: 0,
    fairBy: fair === "off" ? undefined : "header:x-tenant",
    fairShare: fair === "off" ? undefined : fair,
  });
  const conns = [new AnsweringConn(), new AnsweringConn()];
  for (const conn of conns) hub.addWorker(conn, "127.0.0.1:40000");
  while (hub.stats.idle < conns.length) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return [hub, conns];
}
const [fifoHub, fifoConns] = await burstHub("off");
const [fairHub, fairConns] = await burstHub("requests");
const [timeHub, timeConns] = await burstHub("time");

async function burst(target: Hub): Promise<void> {
  const all: Promise<Response>[] = [];
  for (let i = 0; i < 16; i++) {
    all.push(target.fetch(
      new Request("http://hub.example/v1/items?page=2", {
        headers: { ...HEADERS, "x-tenant": TENANTS[i % 4] },
      }),
      { remoteAddr: { hostname: "203.0.113.7" } },
    ));
  }
  for (const res of await Promise.all(all)) {
    if (res.status !== 200) {
      throw new Error(`status ${res.status}: ${await res.text()}`);
    }
    await res.arrayBuffer();
  }
}

Deno.bench("16 at once through 2 slots: first come, first served", {
  group: "queued burst",
  baseline: true,
}, async () => await burst(fifoHub));

Deno.bench("16 at once through 2 slots: fairBy, 4 tenants", {
  group: "queued burst",
}, async () => await burst(fairHub));

Deno.bench("16 at once through 2 slots: fairBy by time, 4 tenants", {
  group: "queued burst",
}, async () => await burst(timeHub));

globalThis.addEventListener("unload", () => {
  for (const conn of [...conns, ...fifoConns, ...fairConns, ...timeConns]) {
    conn.close();
  }
});
