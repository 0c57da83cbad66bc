/**
 * The queueing benchmark's results taken across runs. One run compares one
 * replay of each system per cell, and on a shared machine two replays of the
 * same system land a few percent apart (the benchmark's second HAProxy shows
 * it), so one run cannot tell a near-tie from a loss. Over many runs it can:
 * per cell, how often a system's p99 was at or below the base system's
 * (HAProxy unless told otherwise) in the same run, by how much at the
 * median, and whether the count is more than chance
 * (an exact two-sided sign test). Pure functions over the runs' JSON
 * reports; `bench/queueing_runs.ts` reads the files and writes the report.
 *
 * @module
 */

import type { CellResult, GapResult } from "./queueing.ts";
import { SYSTEM_LABELS, type SystemName, SYSTEMS } from "./_systems.ts";
import { median } from "./_util.ts";

/** What this module needs of one run's `queueing.json`. */
export interface RunInput {
  /** Where it came from (a path), for the report. */
  name: string;
  /** ISO date of the run. */
  date: string;
  /** The build measured (`git describe`), where the run recorded it. */
  build?: string;
  /** The traces' seed, where the run recorded it. */
  seed?: number;
  /**
   * The turn the systems' rotation started at, where the run drew one
   * (runs before 2026-12-07 14:38 did not: each system took the same turn
   * in a cell).
   */
  orderOffset?: number;
  /** Per cell and load. */
  cells: CellResult[];
  /** The saturated (dispatch gap) runs. */
  gaps: GapResult[];
}

/** A cell of the benchmark: K, the service distribution and mean, the load. */
export interface CellKey {
  /** Workers. */
  workers: number;
  /** Service time distribution (`const`, `exp`). */
  dist: string;
  /** Mean service time, ms. */
  meanMs: number;
  /** Utilisation. */
  load: number;
}

/** A summary of ratios over runs. */
export interface Spread {
  /** How many runs had both values. */
  runs: number;
  /** Median ratio. */
  median: number;
  /** Smallest ratio. */
  min: number;
  /** Largest ratio. */
  max: number;
}

/** One system against the base in one cell, over the runs that had both. */
export interface CellAcross extends Spread {
  /** The cell. */
  cell: CellKey;
  /** The system set against the base. */
  system: SystemName;
  /** Runs in which its p99 was at or below the base's. */
  atOrBelow: number;
  /** Exact two-sided sign test of below against above (equal runs dropped). */
  p: number;
  /**
   * `below` or `above` when the sign test finds a difference at the
   * report's level, else `not shown` (a tie, or too few runs to tell).
   */
  verdict: "below" | "above" | "not shown";
}

/** One system's p99 against the ideal queue in a cell of 100 ms jobs. */
export interface IdealAcross extends Spread {
  /** The cell. */
  cell: CellKey;
  /** The system. */
  system: SystemName;
  /** Runs in which its p99 was within 1.05× of the ideal's. */
  within: number;
}

/**
 * One system's median dispatch gap at one K, over runs: the spread of the
 * runs' median gaps, ms.
 */
export interface GapAcross extends Spread {
  /** Workers. */
  workers: number;
  /** The system. */
  system: SystemName;
  /** Runs in which it was below the base's median gap of the same run. */
  belowBase: number;
  /** Runs that measured both it and the base. */
  paired: number;
}

/**
 * One system against the base over the runs of one trace seed: in how many
 * cells its median ratio was at or below 1.
 */
export interface SeedAcross {
  /** The traces' seed. */
  seed: number;
  /** The system. */
  system: SystemName;
  /** The most runs of the seed that had it and the base in a cell. */
  runs: number;
  /** Cells whose median ratio over those runs was at or below 1. */
  notAbove: number;
  /** Cells it was measured in. */
  cells: number;
  /** The highest median ratio. */
  highest: number;
}

/** Everything the report is made from. */
export interface Across {
  /** The runs taken, oldest first, with the systems each had. */
  runs: {
    name: string;
    date: string;
    build?: string;
    seed?: number;
    orderOffset?: number;
    systems: SystemName[];
  }[];
  /** The system every other is set against. */
  base: SystemName;
  /** Every other system against the base, per cell. */
  cells: CellAcross[];
  /** The 100 ms cells against the ideal, per system (the base included). */
  ideal: IdealAcross[];
  /** Dispatch gaps per K and system. */
  gaps: GapAcross[];
  /**
   * Per trace seed, when the runs used more than one (every run of one
   * seed replays the same traces, so a seed's runs share its luck): each
   * system against the base over that seed's runs alone.
   */
  bySeed: SeedAcross[];
  /** The sign test's level. */
  alpha: number;
}

/** Ratio within which a 100 ms cell meets the target (the issue's 1.05×). */
export const IDEAL_TARGET = 1.05;

/**
 * The exact two-sided sign test: the chance, were each run a fair coin
 * toss between the two systems, of a split at least as uneven as
 * `below`/`above`.
 *
 * @param below runs in which the system was lower.
 * @param above runs in which it was higher (equal runs are left out).
 * @returns the p-value, 1 when there is nothing to test.
 */
export function signTest(below: number, above: number): number {
  const n = below + above;
  if (n === 0) return 1;
  const k = Math.min(below, above);
  // P(X <= k) for X ~ Binomial(n, 1/2), summed in logs to stay exact enough
  // for n in the hundreds.
  let tail = 0;
  let logC = 0; // log C(n, 0)
  for (let i = 0; i <= k; i++) {
    if (i > 0) logC += Math.log(n - i + 1) - Math.log(i);
    tail += Math.exp(logC - n * Math.LN2);
  }
  return Math.min(1, 2 * tail);
}

function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return {
    runs: sorted.length,
    median: median(sorted),
    min: sorted[0] ?? NaN,
    max: sorted[sorted.length - 1] ?? NaN,
  };
}

function keyOf(c: CellKey): string {
  return `${c.workers}/${c.dist}/${c.meanMs}/${c.load}`;
}

function cellOrder(a: CellKey, b: CellKey): number {
  return a.workers - b.workers || a.dist.localeCompare(b.dist) ||
    a.meanMs - b.meanMs || a.load - b.load;
}

/** Options of {@linkcode acrossRuns}. */
export interface AcrossOptions {
  /** The system every other is set against (default `haproxy`). */
  base?: SystemName;
  /**
   * The sign test's level (default 0.05, per cell: with 32 cells about one
   * or two show a difference by chance alone).
   */
  alpha?: number;
  /** Only the runs of this trace seed (default: every run). */
  seed?: number;
}

/**
 * Takes the runs together. A run repeated under two names (the same date)
 * counts once.
 *
 * @param runs the runs' reports.
 * @param options the base system and the test's level.
 */
export function acrossRuns(
  runs: RunInput[],
  options: AcrossOptions = {},
): Across {
  const { base = "haproxy", alpha = 0.05, seed } = options;
  const seen = new Set<string>();
  const taken = [...runs].sort((a, b) => a.date.localeCompare(b.date))
    .filter((r) => !seen.has(r.date) && seen.add(r.date))
    .filter((r) => seed === undefined || r.seed === seed);

  // Per cell key, the cell and each system's values over the runs.
  type PerCell = Map<string, { cell: CellKey; by: Map<string, number[]> }>;
  const ratios: PerCell = new Map();
  const ideals: PerCell = new Map();
  const push = (
    into: PerCell,
    cell: CellKey,
    system: string,
    value: number,
  ) => {
    const k = keyOf(cell);
    let entry = into.get(k);
    if (!entry) into.set(k, entry = { cell, by: new Map() });
    const list = entry.by.get(system) ?? [];
    list.push(value);
    entry.by.set(system, list);
  };
  for (const run of taken) {
    for (const c of run.cells) {
      const cell = {
        workers: c.workers,
        dist: c.dist,
        meanMs: c.meanMs,
        load: c.load,
      };
      const baseP99 = c.systems[base]?.latency.p99;
      for (const [system, r] of Object.entries(c.systems)) {
        if (!r) continue;
        if (baseP99 && system !== base) {
          push(ratios, cell, system, r.latency.p99 / baseP99);
        }
        if (c.meanMs === 100 && c.ideal.p99 > 0) {
          push(ideals, cell, system, r.latency.p99 / c.ideal.p99);
        }
      }
    }
  }

  const cells: CellAcross[] = [];
  for (const { cell, by } of ratios.values()) {
    for (const [system, list] of by) {
      const below = list.filter((x) => x < 1).length;
      const above = list.filter((x) => x > 1).length;
      const p = signTest(below, above);
      cells.push({
        cell,
        system: system as SystemName,
        ...spread(list),
        atOrBelow: list.length - above,
        p,
        verdict: p >= alpha ? "not shown" : below > above ? "below" : "above",
      });
    }
  }
  const ideal: IdealAcross[] = [];
  for (const { cell, by } of ideals.values()) {
    for (const [system, list] of by) {
      ideal.push({
        cell,
        system: system as SystemName,
        ...spread(list),
        within: list.filter((x) => x <= IDEAL_TARGET).length,
      });
    }
  }

  const gapRuns = new Map<
    string,
    { mine: number[]; paired: number; below: number }
  >();
  for (const run of taken) {
    for (const g of run.gaps) {
      const k = `${g.workers}/${g.system}`;
      const entry = gapRuns.get(k) ?? { mine: [], paired: 0, below: 0 };
      entry.mine.push(g.gap.p50);
      const h = run.gaps.find((x) =>
        x.workers === g.workers && x.system === base
      );
      if (h && g.system !== base) {
        entry.paired++;
        if (g.gap.p50 < h.gap.p50) entry.below++;
      }
      gapRuns.set(k, entry);
    }
  }
  const gaps: GapAcross[] = [...gapRuns].map(([k, e]) => {
    const [workers, system] = k.split("/");
    return {
      workers: Number(workers),
      system: system as SystemName,
      ...spread(e.mine),
      belowBase: e.below,
      paired: e.paired,
    };
  }).sort((a, b) => a.workers - b.workers || order(a.system, b.system));

  const bySeed: SeedAcross[] = [];
  const seeds = [
    ...new Set(taken.flatMap((r) => r.seed === undefined ? [] : [r.seed])),
  ].sort((a, b) => a - b);
  if (seed === undefined && seeds.length > 1) {
    for (const s of seeds) {
      const one = acrossRuns(taken, { base, alpha, seed: s });
      for (const system of [...new Set(one.cells.map((c) => c.system))]) {
        const t = tally(one.cells, system);
        bySeed.push({
          seed: s,
          system,
          runs: t.runs,
          notAbove: t.notAbove,
          cells: t.cells.length,
          highest: t.worst.median,
        });
      }
    }
    bySeed.sort((a, b) => a.seed - b.seed || order(a.system, b.system));
  }

  const bySystemThenCell = (
    a: { cell: CellKey; system: SystemName },
    b: { cell: CellKey; system: SystemName },
  ) => order(a.system, b.system) || cellOrder(a.cell, b.cell);
  return {
    runs: taken.map((r) => ({
      name: r.name,
      date: r.date,
      build: r.build,
      seed: r.seed,
      orderOffset: r.orderOffset,
      systems: [
        ...new Set(r.cells.flatMap((c) => Object.keys(c.systems))),
      ].sort(order) as SystemName[],
    })),
    cells: cells.sort(bySystemThenCell),
    ideal: ideal.sort(bySystemThenCell),
    gaps,
    bySeed,
    base,
    alpha,
  };
}

// One system's cells against the base: the most runs any had, how many
// have a median ratio at or below 1, and the one with the highest.
function tally(
  all: CellAcross[],
  system: SystemName,
): { cells: CellAcross[]; runs: number; notAbove: number; worst: CellAcross } {
  const cells = all.filter((c) => c.system === system);
  return {
    cells,
    runs: Math.max(...cells.map((c) => c.runs)),
    notAbove: cells.filter((c) => c.median <= 1).length,
    worst: cells.reduce((w, c) => c.median > w.median ? c : w),
  };
}

function order(a: string, b: string): number {
  return SYSTEMS.indexOf(a as SystemName) - SYSTEMS.indexOf(b as SystemName);
}

function cellLabel(c: CellKey): string {
  return `K=${c.workers} ${c.dist} ${c.meanMs} ms @ ${
    Math.round(c.load * 100)
  }%`;
}

function pText(p: number): string {
  return p >= 0.01 ? p.toFixed(2) : p < 0.0001 ? "<0.0001" : p.toFixed(4);
}

function ratioText(s: Spread): string {
  return `${s.median.toFixed(3)} (${s.min.toFixed(3)}–${s.max.toFixed(3)})`;
}

// A table with a row per cell and a group of columns per system.
function cellTable<T extends { cell: CellKey; system: SystemName }>(
  rows: T[],
  systems: SystemName[],
  columns: string[],
  text: (row: T) => string,
): string[] {
  const lines = [
    "| cell | " +
    systems.map((s) => `${SYSTEM_LABELS[s]}: ${columns.join(" | ")}`).join(
      " | ",
    ) + " |",
    "| --- |" + systems.map(() => columns.map(() => " ---: |").join(""))
      .join(""),
  ];
  const cells = [...new Map(rows.map((r) => [keyOf(r.cell), r.cell])).values()]
    .sort(cellOrder);
  for (const cell of cells) {
    const row = systems.map((s) => {
      const r = rows.find((x) =>
        x.system === s && keyOf(x.cell) === keyOf(cell)
      );
      return r ? text(r) : columns.map(() => "–").join(" | ");
    });
    lines.push(`| ${cellLabel(cell)} | ${row.join(" | ")} |`);
  }
  return lines;
}

/**
 * The markdown report.
 *
 * @param across what {@linkcode acrossRuns} made.
 * @param command the command line that made it, for the header.
 */
export function renderAcross(across: Across, command: string): string {
  const lines: string[] = [];
  const systems = [...new Set(across.cells.map((c) => c.system))];
  const n = across.runs.length;
  const base = SYSTEM_LABELS[across.base];
  const cellCount = new Set(across.cells.map((c) => keyOf(c.cell))).size;
  // The fewest runs whose most uneven split (all one way) the test can tell.
  let fewest = 1;
  while (signTest(fewest, 0) >= across.alpha) fewest++;
  lines.push(
    `# Queueing benchmark: every full run taken together, against ${base}`,
    "",
    `Generated by \`${command}\`. Do not edit by hand.`,
    "",
    `${n} full runs, ${across.runs[0]?.date ?? "-"} to ${
      across.runs[n - 1]?.date ?? "-"
    }, on this machine and on the code of the day (the build, where the run ` +
      "recorded it, is in the list of runs at the end); a system counts in a " +
      `cell only in the runs that had it and ${base}. Per cell: in how many ` +
      `runs its p99 was at or below ${base}'s in the same run, the median ` +
      "ratio of the two p99s (smallest to largest in brackets), and the exact " +
      "two-sided sign test of runs below against runs above: **below** or " +
      `**above** where p < ${across.alpha}, else **not shown** (a tie, or ` +
      `too few runs to tell). At that level, about ${
        (across.alpha * cellCount).toFixed(1)
      } of ${cellCount} cells show a difference by chance alone, and with ` +
      `fewer than ${fewest} runs no split can.`,
    "",
  );

  lines.push("## Verdicts", "");
  for (const system of systems) {
    const { cells: mine, runs, notAbove, worst } = tally(across.cells, system);
    const below = mine.filter((c) => c.verdict === "below");
    const above = mine.filter((c) => c.verdict === "above");
    lines.push(
      `- **${SYSTEM_LABELS[system]}** (${runs} runs): median p99 at or below ` +
        `${base}'s in ${notAbove} of ${mine.length} cells (highest ${
          worst.median.toFixed(3)
        }, ${
          cellLabel(worst.cell)
        }); below by the sign test in ${below.length}, ` +
        `above in ${above.length}${
          above.length
            ? ` (${above.map((c) => cellLabel(c.cell)).join(", ")})`
            : ""
        }.`,
    );
  }
  const idealSystems = [...new Set(across.ideal.map((c) => c.system))];
  for (const system of idealSystems) {
    const mine = across.ideal.filter((c) => c.system === system);
    lines.push(
      `- 100 ms jobs, ${SYSTEM_LABELS[system]}: median p99 within ` +
        `${IDEAL_TARGET}× of the ideal in ${
          mine.filter((c) => c.median <= IDEAL_TARGET).length
        } of ${mine.length} cells; ${
          mine.reduce((s, c) => s + c.within, 0)
        } of ${mine.reduce((s, c) => s + c.runs, 0)} cell runs within.`,
    );
  }
  for (const g of across.gaps.filter((g) => g.system !== across.base)) {
    lines.push(
      `- Dispatch gap, ${SYSTEM_LABELS[g.system]}, K=${g.workers}: below ` +
        `${base}'s in ${g.belowBase} of ${g.paired} runs.`,
    );
  }
  lines.push("");

  lines.push(
    `## p99 against ${base}, per cell`,
    "",
    ...cellTable(
      across.cells,
      systems,
      ["at or below", "ratio", "p"],
      (c) =>
        `${c.atOrBelow}/${c.runs} | ${ratioText(c)} | ${pText(c.p)}${
          c.verdict === "not shown" ? "" : ` **${c.verdict}**`
        }`,
    ),
    "",
    `## 100 ms jobs: p99 over the ideal queue's (target ${IDEAL_TARGET}×)`,
    "",
    ...cellTable(
      across.ideal,
      idealSystems,
      ["within", "ratio"],
      (c) => `${c.within}/${c.runs} | ${ratioText(c)}`,
    ),
    "",
  );

  lines.push(
    "## Dispatch gap (each run's median), ms",
    "",
    `| K | system | runs | median of runs | smallest–largest | below ${base}'s |`,
    "| ---: | --- | ---: | ---: | ---: | ---: |",
  );
  for (const g of across.gaps) {
    lines.push(
      `| ${g.workers} | ${SYSTEM_LABELS[g.system]} | ${g.runs} | ${
        g.median.toFixed(3)
      } | ${g.min.toFixed(3)}–${g.max.toFixed(3)} | ${
        g.system === across.base ? "–" : `${g.belowBase}/${g.paired}`
      } |`,
    );
  }
  if (across.bySeed.length > 0) {
    lines.push(
      "",
      "## By trace seed",
      "",
      "Every run of one seed replays the same traces, so its runs share " +
        "that trace's luck; here each seed's runs are taken alone.",
      "",
      `| seed | system | runs | cells with median p99 at or below ${base}'s | highest median ratio |`,
      "| ---: | --- | ---: | ---: | ---: |",
    );
    for (const s of across.bySeed) {
      lines.push(
        `| ${s.seed} | ${
          SYSTEM_LABELS[s.system]
        } | ${s.runs} | ${s.notAbove}/${s.cells} | ${s.highest.toFixed(3)} |`,
      );
    }
  }
  lines.push("", "## Runs", "");
  for (const r of across.runs) {
    const facts = [
      r.build ? `build ${r.build}` : "",
      r.seed === undefined ? "" : `seed ${r.seed}`,
      r.orderOffset === undefined ? "" : `turns from ${r.orderOffset}`,
    ].filter((x) => x !== "");
    lines.push(
      `- ${r.date}: \`${r.name}\`${facts.map((f) => `, ${f}`).join("")} (${
        r.systems.map((s) => SYSTEM_LABELS[s]).join(", ")
      })`,
    );
  }
  lines.push("");
  return lines.join("\n");
}
