/**
 * Rules for holding requests ahead, compared in simulation (issue 5): the
 * p99 latency of plain dispatch and of five holding rules, as a multiple of
 * the ideal queue's on the same traces (the queueing benchmark's cells and
 * loads), on long traces and on traces as long as the benchmark's own. See
 * `_hold_sim.ts` for the model and its costs.
 *
 * ```sh
 * deno run -A bench/hold_policy.ts [--seeds=3] [--requests=100000] [--short-seeds=30]
 *   [--gap=0.55] [--hand=0.2] [--revoke=0.3] [--out=bench/results]
 * ```
 *
 * Writes `hold_policy.md` under `--out`. Pure arithmetic: no process or
 * socket, the same figures on every machine.
 *
 * @module
 */

import { join } from "node:path";
import { parseArgs } from "node:util";
import { type Distribution, makeTrace } from "./_trace.ts";
import { percentile, simulateFifo } from "./_sim.ts";
import { type HoldSimOptions, simulateHold } from "./_hold_sim.ts";

const RULES: { name: string; options: HoldSimOptions }[] = [
  { name: "plain", options: { hold: false } },
  { name: "always", options: { inOrder: 0 } },
  { name: "in order", options: { queueFactor: Infinity } },
  { name: "queue ≥ 4K", options: { inOrder: 2, queueFactor: 4 } },
  { name: "in order or queue ≥ 4K", options: { queueFactor: 4 } },
  { name: "in order or queue ≥ K·mean/5 ms", options: {} },
  // What the hub does (hub.ts HOLD_MAX_WAIT, HOLD_MAX_WAIT_LONG).
  {
    name: "the same, held ≤ 2 mean jobs (4 in a long queue; the hub's)",
    options: { maxWait: 2, maxWaitLong: 4 },
  },
];

const { values } = parseArgs({
  options: {
    seeds: { type: "string", default: "3" },
    "short-seeds": { type: "string", default: "30" },
    requests: { type: "string", default: "100000" },
    gap: { type: "string", default: "0.55" },
    hand: { type: "string", default: "0.2" },
    revoke: { type: "string", default: "0.3" },
    out: { type: "string", default: "bench/results" },
  },
});
const seeds = Number(values.seeds);
const requests = Number(values.requests);
const shortSeeds = Number(values["short-seeds"]);
const costs = {
  gapMs: Number(values.gap),
  handMs: Number(values.hand),
  revokeMs: Number(values.revoke),
};
for (
  const [name, value] of Object.entries({
    seeds,
    "short-seeds": shortSeeds,
    requests,
    ...costs,
  })
) {
  if (!(value >= 0) || !Number.isFinite(value)) {
    console.error(`Invalid --${name}: got ${value}`);
    Deno.exit(2);
  }
}

const lines = [
  "# Holding requests ahead: rules compared in simulation",
  "",
  `p99 latency ÷ the ideal queue's p99 on the same trace, per cell (\`bench/hold_policy.ts\`, \`bench/_hold_sim.ts\`). ` +
  `Costs: ${costs.gapMs} ms finish-to-start through the hub, ${costs.handMs} ms for a ` +
  `held request, ${costs.revokeMs} ms round trip per take-back. Bold: the lowest in the row.`,
  "",
];
table(
  `Long traces: mean of ${seeds} seeds of ${requests} requests per cell`,
  seeds,
  (rate) => Math.min(3_600_000, requests / rate),
);
// The queueing benchmark's own length (bench/queueing.ts: 10 s, lengthened
// up to 2x to reach 1 500 requests): there the p99 is set by a few
// episodes, where holding's reordering weighs more than its saved gaps.
table(
  `The queueing benchmark's trace lengths (10-20 s, up to 1 500 requests): mean of ${shortSeeds} seeds per cell`,
  shortSeeds,
  (rate) => Math.min(20_000, Math.max(10_000, 1500 / rate)),
);

function table(
  title: string,
  count: number,
  durationOf: (rate: number) => number,
): void {
  lines.push(
    `## ${title}`,
    "",
    `| cell | load | ${
      RULES.map((r) => r.name).join(" | ")
    } | held (last rule) |`,
    `| --- | --- | ${RULES.map(() => "---").join(" | ")} | --- |`,
  );
  for (const k of [4, 16]) {
    for (const dist of ["const", "exp"] as Distribution[]) {
      for (const meanMs of [20, 100]) {
        for (const load of [0.5, 0.8, 0.9, 0.95]) {
          const sums = RULES.map(() => 0);
          let held = 0;
          for (let seed = 1; seed <= count; seed++) {
            const rate = (k * load) / meanMs;
            const trace = makeTrace({
              workers: k,
              load,
              meanMs,
              dist,
              durationMs: durationOf(rate),
              seed: seed * 7919 + k * 31 + meanMs,
            });
            const ideal = p99(
              simulateFifo(trace.arrivals, trace.service, k).latency,
            );
            RULES.forEach((rule, i) => {
              const r = simulateHold(trace.arrivals, trace.service, k, {
                ...costs,
                ...rule.options,
              });
              sums[i] += p99(r.latency) / ideal / count;
              if (i === RULES.length - 1) {
                held += r.held / trace.arrivals.length / count;
              }
            });
          }
          const best = Math.min(...sums.map((x) => Number(x.toFixed(3))));
          const cells = sums.map((x) =>
            Number(x.toFixed(3)) === best ? `**${x.toFixed(3)}**` : x.toFixed(3)
          );
          lines.push(
            `| K=${k}, ${dist} ${meanMs} ms | ${load * 100}% | ${
              cells.join(" | ")
            } | ${(held * 100).toFixed(0)}% |`,
          );
          console.log(lines.at(-1));
        }
      }
    }
  }
  lines.push("");
}

await Deno.writeTextFile(
  join(values.out, "hold_policy.md"),
  lines.join("\n") + "\n",
);

function p99(latency: Float64Array): number {
  return percentile(Float64Array.from(latency).sort(), 99);
}
