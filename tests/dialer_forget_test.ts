// A worker whose hub name resolves to ever new addresses (hub pods replaced
// behind a headless service, over weeks) must not remember every address it
// ever saw: an address gone from DNS is forgotten once its connections have
// ended. Fake hubs (connections that carry nothing) and a fake resolver;
// counts only, no durations.

import assert from "node:assert/strict";
import { Dialer } from "../_dialer.ts";
import { connectionNotices } from "../_worker_cli.ts";
import { deadline, waitFor } from "./_relay.ts";

const HANG = 20_000;
const ROUNDS = 200;

/** A connection that takes writes and never delivers a byte. */
function silentConn() {
  return {
    read: () => new Promise<number | null>(() => {}),
    write: (p: Uint8Array) => Promise.resolve(p.length),
    close: () => {},
  };
}

interface Run {
  dialer: Dialer;
  lookups: number;
  dials: number;
  live: number;
}

// A dialer for "hubs.test" whose every lookup answers one address never
// answered before. `reachable`: whether connecting to an address works.
async function rotating(
  reachable: boolean,
  fn: (run: Run) => Promise<void>,
): Promise<void> {
  const stop = new AbortController();
  const kill = new AbortController();
  let next = 1;
  const run = { lookups: 0, dials: 0, live: 0 } as Run;
  run.dialer = new Dialer(
    {
      targets: [{ hostname: "hubs.test", port: 4040 }],
      concurrency: 2,
      resolveInterval: 5,
      minBackoff: 1,
      maxBackoff: 5,
      resolve: () => {
        run.lookups++;
        const n = next++;
        return Promise.resolve([
          `10.${n >> 16 & 255}.${n >> 8 & 255}.${n & 255}`,
        ]);
      },
      connect: () => {
        run.dials++;
        return reachable
          ? Promise.resolve(silentConn())
          : Promise.reject(new Error("connection refused"));
      },
      serve: (_conn, _endpoint, hooks) =>
        new Promise<number>((resolve) => {
          // An engine hands a withdrawn idle connection back at once.
          if (hooks.withdraw.aborted) return resolve(0);
          run.live++;
          const end = () => {
            run.live--;
            resolve(0);
          };
          hooks.withdraw.addEventListener("abort", end, { once: true });
          kill.signal.addEventListener("abort", end, { once: true });
        }),
      onError: () => {},
    },
    stop.signal,
    kill.signal,
  );
  const running = run.dialer.run();
  try {
    await deadline(fn(run), 2 * HANG, "the scenario");
  } finally {
    kill.abort();
    await running;
  }
}

// Waits until at most the address of the latest answer, and one whose
// connections are still ending, are remembered; fails naming how many are.
async function forgotten(run: Run): Promise<void> {
  await waitFor(
    () => run.dialer.remembered <= 2,
    "addresses gone from DNS forgotten",
    HANG,
  ).catch(() => {});
  assert.ok(
    run.dialer.remembered <= 2,
    `${run.dialer.remembered} addresses remembered after ${run.lookups} lookups`,
  );
}

Deno.test(`a hub name answering ${ROUNDS} new addresses in turn leaves the worker remembering only the current ones`, async () => {
  await rotating(true, async (run) => {
    await waitFor(
      () => run.lookups >= ROUNDS && run.dials >= ROUNDS / 2,
      `${ROUNDS} lookups and dials`,
      HANG,
    );
    // Connections of addresses gone from DNS end as they are handed back.
    await forgotten(run);
    assert.ok(run.live <= 4, `${run.live} connections open`);
  });
});

Deno.test(`a hub name answering ${ROUNDS} new unreachable addresses in turn leaves the worker remembering only the current ones`, async () => {
  await rotating(false, async (run) => {
    await waitFor(
      () => run.lookups >= ROUNDS && run.dials >= ROUNDS / 2,
      `${ROUNDS} lookups and dials`,
      HANG,
    );
    await forgotten(run);
    assert.equal(run.live, 0);
  });
});

Deno.test("the worker CLI's connection notices say each thing once and remember a bounded number of hub addresses", () => {
  const lines: string[] = [];
  const notices = connectionNotices(2, {
    log: (line) => lines.push(line),
    error: (line) => lines.push(line),
  });
  const refused = new Error("Connection refused");
  notices.onConnect("10.0.0.1:4040");
  notices.onConnect("10.0.0.1:4040");
  assert.equal(notices.onConnectError(refused, "connect 10.0.0.1:4040"), true);
  assert.equal(notices.onConnectError(refused, "connect 10.0.0.1:4040"), true);
  notices.onConnect("10.0.0.1:4040");
  notices.onConnect("10.0.0.1:4040");
  assert.equal(notices.onConnectError(refused, "handler"), false);
  assert.deepEqual(lines, [
    "Connected to 10.0.0.1:4040 (concurrency 2)",
    "pothead-worker: cannot connect to 10.0.0.1:4040: Connection refused (retrying)",
    "Connected to 10.0.0.1:4040 again",
  ]);
  // A hub name whose addresses keep changing: each new one connects once,
  // and fails once before it leaves.
  for (let n = 0; n < 20 * ROUNDS; n++) {
    const hub = `10.1.${n >> 8 & 255}.${n & 255}:4040`;
    notices.onConnect(hub);
    notices.onConnectError(refused, `connect ${hub}`);
  }
  assert.ok(
    notices.remembered <= 2 * 1024 + 2,
    `${notices.remembered} hub addresses remembered`,
  );
});
