/**
 * Micro-benchmark of the hub's queues alone: `deno bench bench/queue_bench.ts`.
 * Each case queues 10 000 values with a queue timeout armed (as the hub
 * always has one) and then serves them all: one first-come-first-served
 * queue, and fair queues where every value is its own key (a burst from
 * 10 000 consumers), in turn and by worker time. What a fair queue costs
 * per key beyond a FIFO is the difference.
 *
 * @module
 */

import { FairQueue, WaitQueue } from "../_queue.ts";
import { ShareLedger } from "../_share.ts";

const N = 10_000;
const TIMEOUT = 30_000;
const onTimeout = () => {
  throw new Error("nothing should time out in a benchmark");
};
const values = Array.from({ length: N }, (_, i) => `k${i}`);
const keyOf = (v: string) => v;

// Queues every value, then serves them all (and checks that it did).
function fill(q: { push(v: string): unknown; shift(): unknown }): void {
  for (const v of values) q.push(v);
  let served = 0;
  while (q.shift() !== null) served++;
  if (served !== N) throw new Error(`served ${served} of ${N}`);
}

Deno.bench("10 000 values queued and served: first come, first served", {
  group: "10 000 queued",
  baseline: true,
}, () => {
  fill(new WaitQueue<string>({ timeout: TIMEOUT, onTimeout }));
});

Deno.bench("10 000 values queued and served: fair, 10 000 keys in turn", {
  group: "10 000 queued",
}, () => {
  fill(new FairQueue<string>({ timeout: TIMEOUT, onTimeout, keyOf }));
});

Deno.bench("10 000 values queued and served: fair, 10 000 keys by time", {
  group: "10 000 queued",
}, async () => {
  const ledger = new ShareLedger();
  fill(new FairQueue<string>({ timeout: TIMEOUT, onTimeout, keyOf, ledger }));
  // The ledger forgets released keys in a microtask.
  await Promise.resolve();
});

Deno.bench("10 000 values queued and served: fair, 10 keys in turn", {
  group: "10 000 queued",
}, () => {
  fill(
    new FairQueue<string>({
      timeout: TIMEOUT,
      onTimeout,
      keyOf: (v) => v.slice(0, 2),
    }),
  );
});
