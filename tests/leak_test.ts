/**
 * Memory that requests leave behind in the hub, measured in a real process
 * after full GCs: a request body raced against the hub's lifetime promise
 * stayed reachable for as long as the hub ran (every body ever read; found
 * by the soak under a small heap, 12-07).
 */

import assert from "node:assert/strict";

Deno.test("request bodies do not stay reachable after their requests end", async () => {
  const requests = 3000;
  const size = 32 * 1024;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net",
      "--allow-env",
      "--v8-flags=--expose-gc",
      new URL("./fixtures/heap_growth.ts", import.meta.url).pathname,
    ],
    env: { LEAK_REQUESTS: String(requests), LEAK_BODY: String(size) },
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.ok(out.success, text + new TextDecoder().decode(out.stderr));
  const { before, after } = JSON.parse(text.trim().split("\n").pop()!);
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
