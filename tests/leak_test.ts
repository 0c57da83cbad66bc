/**
 * Memory that requests and worker connections leave behind, measured in a
 * real process (hub and worker together) after full GCs:
 * - a request body raced against the hub's lifetime promise stayed
 *   reachable for as long as the hub ran (every body ever read; found by
 *   the soak under a small heap, 12-07);
 * - every worker connection makes signals that follow the worker's
 *   lifetime signals (`AbortSignal.any`); in Deno 2.9 such a signal with an
 *   abort listener stays reachable from its sources until they abort or
 *   the listener is removed (about 1.1 KB each, seen 12-07), so a worker
 *   that reconnects often would grow for as long as it runs.
 */

import assert from "node:assert/strict";

interface Growth {
  before: number;
  after: number;
  connections: number;
}

async function growth(env: Record<string, string>): Promise<Growth> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--v8-flags=--expose-gc",
      new URL("./fixtures/heap_growth.ts", import.meta.url).pathname,
    ],
    env,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, text + new TextDecoder().decode(out.stderr));
  return JSON.parse(text.trim().split("\n").pop()!);
}

Deno.test("request bodies do not stay reachable after their requests end", async () => {
  const requests = 3000;
  const size = 32 * 1024;
  const { before, after } = await growth({
    LEAK_REQUESTS: String(requests),
    LEAK_BODY: String(size),
  });
  const grown = after - before;
  // Kept bodies would be requests × size = 98 MB; what V8 keeps of its own
  // (code, caches, a larger pool of buffers) stays a few MB.
  assert.ok(
    grown < (requests * size) / 8,
    `memory grew ${
      (grown / 1e6).toFixed(1)
    } MB over ${requests} uploads of ${size} bytes`,
  );
});

Deno.test("worker connections leave nothing behind when they end", async () => {
  const requests = 4000;
  const { before, after, connections } = await growth({
    LEAK_REQUESTS: String(requests),
    LEAK_RECONNECT: "1",
  });
  // Each request closed its connection: the worker dialed one for each.
  assert.ok(
    connections >= requests,
    `${connections} connections for ${requests} requests`,
  );
  const grown = after - before;
  // A signal kept per connection would be about 1.1 KB × 4 000 = 4.4 MB;
  // without one, the growth over this many connections stayed under 0.6 MB.
  assert.ok(
    grown < connections * 512,
    `memory grew ${
      (grown / 1e6).toFixed(2)
    } MB over ${connections} worker connections`,
  );
});
