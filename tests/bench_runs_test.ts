/**
 * The queueing benchmark's results across runs (bench/_runs.ts,
 * bench/queueing_runs.ts): the sign test against hand-computed binomial
 * tails, and the per-cell counts, ratios and verdicts on made-up runs.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  acrossRuns,
  renderAcross,
  type RunInput,
  signTest,
} from "../bench/_runs.ts";
import { main, readRuns } from "../bench/queueing_runs.ts";
import type { CellResult, GapResult, RunResult } from "../bench/queueing.ts";
import type { SystemName } from "../bench/_systems.ts";

function close(actual: number, expected: number, eps = 1e-9): void {
  assert.ok(
    Math.abs(actual - expected) <= eps,
    `expected ${expected}, got ${actual}`,
  );
}

Deno.test("sign test gives the exact two-sided binomial tail", () => {
  // 8 of 8 one way: 2 / 2^8.
  close(signTest(8, 0), 2 / 256);
  close(signTest(0, 8), 2 / 256);
  // 6 of 19 below: 2 * sum_{i<=6} C(19, i) / 2^19 = 2 * 43 796 / 524 288.
  close(signTest(6, 13), (2 * 43796) / 524288);
  // An even split, and nothing to test, are no evidence at all.
  assert.equal(signTest(5, 5), 1);
  assert.equal(signTest(0, 0), 1);
  // Large n stays finite and small: 200 of 200.
  const p = signTest(200, 0);
  assert.ok(p > 0 && p < 1e-50, `p = ${p}`);
});

function result(p99: number): RunResult {
  return {
    latency: {
      n: 100,
      p50: p99 / 2,
      p90: p99 * 0.8,
      p99,
      p999: p99,
      max: p99,
      mean: p99 / 2,
    },
    ratio: { p50: 1, p90: 1, p99: 1, p999: 1, max: 1 },
    throughput: 1,
    errors: 0,
    errorKinds: {},
    sendLateP99: 0,
    sendLateMax: 0,
    serviceErrorMs: 0,
    clientCpuShare: 0,
    balancerCpuMs: 0,
    workerCpuMs: 0,
  };
}

function cell(
  meanMs: number,
  load: number,
  idealP99: number,
  p99: Partial<Record<SystemName, number>>,
): CellResult {
  return {
    workers: 4,
    dist: "exp",
    meanMs,
    load,
    durationMs: 1000,
    requests: 100,
    ideal: { n: 100, p50: 1, p90: 1, p99: idealP99, p999: 1, max: 1, mean: 1 },
    systems: Object.fromEntries(
      Object.entries(p99).map(([s, v]) => [s, result(v!)]),
    ),
  };
}

function gap(system: SystemName, p50: number): GapResult {
  return {
    workers: 4,
    system,
    ms: 20,
    gap: { n: 10, p50, p90: p50, p99: p50, p999: p50, max: p50, mean: p50 },
    throughput: 1,
    capacity: 1,
    errors: 0,
    clientCpuShare: 0,
    balancerCpuMs: 0,
    workerCpuMs: 0,
  };
}

// Eight runs: in the 20 ms cell POTHEAD is below HAProxy every time; in the
// 100 ms cell above in seven and equal in one; the hold is in half the runs.
function runs(): RunInput[] {
  return Array.from({ length: 8 }, (_, i) => ({
    name: `run${i}.json`,
    date: `2026-12-0${i + 1}T00:00:00Z`,
    cells: [
      cell(20, 0.9, 50, {
        pothead: 90,
        haproxy: 100,
        ...(i % 2 ? { "pothead-hold": 80 } : {}),
      }),
      cell(100, 0.5, 100, { pothead: i === 0 ? 104 : 110, haproxy: 104 }),
    ],
    gaps: [gap("pothead", 0.5 + i / 100), gap("haproxy", 0.4 + (i % 2) / 5)],
  }));
}

Deno.test("across runs: counts, ratios and verdicts per cell and system", () => {
  const a = acrossRuns(runs());
  assert.equal(a.runs.length, 8);
  assert.deepEqual(a.runs[1].systems, ["pothead", "pothead-hold", "haproxy"]);

  const fast = a.cells.find((c) =>
    c.system === "pothead" && c.cell.meanMs === 20
  )!;
  assert.equal(fast.runs, 8);
  assert.equal(fast.atOrBelow, 8);
  close(fast.median, 0.9);
  assert.equal(fast.verdict, "below");
  close(fast.p, 2 / 256);

  const slow = a.cells.find((c) =>
    c.system === "pothead" && c.cell.meanMs === 100
  )!;
  assert.equal(slow.atOrBelow, 1, "the equal run counts as at or below");
  close(slow.min, 1);
  close(slow.max, 110 / 104);
  // The equal run is left out of the test: 0 below, 7 above.
  close(slow.p, 2 / 128);
  assert.equal(slow.verdict, "above");

  // The hold ran in four runs only: 4 of 4 below is not enough to tell.
  const hold = a.cells.find((c) => c.system === "pothead-hold")!;
  assert.equal(hold.runs, 4);
  assert.equal(hold.atOrBelow, 4);
  close(hold.p, 2 / 16);
  assert.equal(hold.verdict, "not shown");

  // Only the 100 ms cell is set against the ideal, HAProxy included.
  assert.deepEqual(
    a.ideal.map((c) => [c.system, c.cell.meanMs, c.within, c.runs]),
    [["pothead", 100, 1, 8], ["haproxy", 100, 8, 8]],
  );

  // Gaps: POTHEAD 0.50-0.57 against HAProxy 0.4 (even runs) or 0.6 (odd).
  const g = a.gaps.find((x) => x.system === "pothead")!;
  assert.equal(g.runs, 8);
  assert.equal(g.paired, 8);
  assert.equal(g.belowBase, 4);
  close(g.median, 0.535);
  assert.equal(a.gaps.find((x) => x.system === "haproxy")!.paired, 0);
});

Deno.test("across runs: any system can be the base", () => {
  const a = acrossRuns(runs(), { base: "pothead" });
  assert.equal(a.base, "pothead");
  const hold = a.cells.find((c) => c.system === "pothead-hold")!;
  assert.equal(hold.runs, 4);
  close(hold.median, 80 / 90);
  const haproxy = a.cells.filter((c) => c.system === "haproxy");
  assert.deepEqual(haproxy.map((c) => c.atOrBelow), [0, 8]);
  assert.equal(a.cells.some((c) => c.system === "pothead"), false);
  assert.equal(a.gaps.find((g) => g.system === "haproxy")!.belowBase, 4);
  assert.match(
    renderAcross(a, "cmd"),
    /## p99 against POTHEAD, per cell/,
  );
});

Deno.test("across runs: a run kept under two names counts once", () => {
  const all = runs();
  const a = acrossRuns([...all, { ...all[3], name: "copy.json" }]);
  assert.equal(a.runs.length, 8);
  assert.equal(a.cells.find((c) => c.system === "pothead")!.runs, 8);
});

Deno.test("across runs: the report gives the verdicts and every cell", () => {
  const text = renderAcross(acrossRuns(runs()), "cmd");
  assert.match(text, /Generated by `cmd`/);
  assert.match(
    text,
    /\*\*POTHEAD\*\* \(8 runs\): median p99 at or below HAProxy maxconn 1's in 1 of 2 cells \(highest 1\.058, K=4 exp 100 ms @ 50%\); below by the sign test in 1, above in 1 \(K=4 exp 100 ms @ 50%\)/,
  );
  assert.match(
    text,
    /\| K=4 exp 20 ms @ 90% \| 8\/8 \| 0\.900 \(0\.900–0\.900\) \| 0\.0078 \*\*below\*\* \|/,
  );
  assert.match(
    text,
    /Dispatch gap, POTHEAD, K=4: below HAProxy maxconn 1's in 4 of 8 runs/,
  );
  assert.match(text, /- 2026-12-08T00:00:00Z: `run7.json`/);
});

// The eight runs with seeds: runs 0-5 seed 1, runs 6-7 seed 2, and in the
// seed 2 runs POTHEAD is above HAProxy in the 20 ms cell too.
function seeded(): RunInput[] {
  return runs().map((r, i) =>
    i < 6 ? { ...r, seed: 1 } : {
      ...r,
      seed: 2,
      orderOffset: 5 + i,
      cells: [
        cell(20, 0.9, 50, { pothead: 120, haproxy: 100 }),
        r.cells[1],
      ],
    }
  );
}

Deno.test("across runs: each trace seed's runs taken alone, and one seed picked", () => {
  const a = acrossRuns(seeded());
  assert.deepEqual(
    a.bySeed.map((s) => [s.seed, s.system, s.runs, s.notAbove, s.cells]),
    [
      [1, "pothead", 6, 1, 2],
      [1, "pothead-hold", 3, 1, 1],
      [2, "pothead", 2, 0, 2],
    ],
  );
  close(a.bySeed[2].highest, 1.2);
  // Over all eight runs the 20 ms cell's median is still below.
  const fast = a.cells.find((c) =>
    c.system === "pothead" && c.cell.meanMs === 20
  )!;
  assert.equal(fast.atOrBelow, 6);
  close(fast.median, 0.9);

  const two = acrossRuns(seeded(), { seed: 2 });
  assert.deepEqual(two.runs.map((r) => r.name), ["run6.json", "run7.json"]);
  assert.deepEqual(two.bySeed, []);
  close(two.cells.find((c) => c.cell.meanMs === 20)!.median, 1.2);

  const text = renderAcross(a, "cmd");
  assert.match(text, /## By trace seed/);
  assert.match(text, /\| 2 \| POTHEAD \| 2 \| 0\/2 \| 1\.200 \|/);
  assert.match(text, /`run6\.json`, seed 2, turns from 11 \(/);
  assert.match(text, /`run0\.json`, seed 1 \(/);
  // One seed: no section.
  assert.doesNotMatch(renderAcross(two, "cmd"), /By trace seed/);
});

Deno.test("reading runs: only full queueing runs, and none before --since", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [one, two] = runs();
    const write = (path: string, value: unknown) =>
      Deno.writeTextFile(join(dir, path), JSON.stringify(value));
    await Deno.mkdir(join(dir, "sub"));
    await write("a.json", { ...one, plan: { mode: "full" } });
    await write("sub/b.json", { ...two, plan: { mode: "full" } });
    await write("quick.json", { ...two, plan: { mode: "quick" } });
    await write("other.json", { plan: { mode: "full" }, rows: [] });
    await Deno.writeTextFile(join(dir, "broken.json"), "{");
    await Deno.writeTextFile(join(dir, "notes.md"), "not json");

    const all = await readRuns([dir]);
    assert.deepEqual(all.runs.map((r) => r.date), [one.date, two.date]);
    assert.equal(all.skipped.length, 2, all.skipped.join("\n"));
    assert.ok(all.skipped.some((s) => s.endsWith("quick.json: a quick run")));
    assert.ok(all.skipped.some((s) => s.includes("broken.json")));

    const late = await readRuns([dir], two.date);
    assert.deepEqual(late.runs.map((r) => r.date), [two.date]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reading runs: the seed and the first turn, and --seed", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const [one, two] = runs();
    await Deno.writeTextFile(
      join(dir, "a.json"),
      JSON.stringify({ ...one, plan: { mode: "full", seed: 1 } }),
    );
    await Deno.writeTextFile(
      join(dir, "b.json"),
      JSON.stringify({
        ...two,
        plan: { mode: "full", seed: 2, orderOffset: 7 },
      }),
    );
    const read = await readRuns([dir]);
    assert.deepEqual(
      read.runs.map((r) => [r.seed, r.orderOffset]),
      [[1, undefined], [2, 7]],
    );
    const out = join(dir, "report.md");
    assert.equal(await main(["--seed=2", `--out=${out}`, dir]), 0);
    const text = await Deno.readTextFile(out);
    assert.match(text, /^1 full runs/m);
    assert.match(text, /`.*b\.json`, seed 2, turns from 7/);
    assert.equal(await main(["--seed=3", dir]), 1);
    assert.equal(await main(["--seed=x", dir]), 2);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
