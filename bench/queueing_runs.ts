/**
 * Takes every full run of the queueing benchmark together: per cell, how
 * often each system's p99 was at or below HAProxy's in the same run, and
 * whether that is more than chance (see `bench/_runs.ts`).
 *
 * ```sh
 * deno run -R -W bench/queueing_runs.ts [--base=SYSTEM] [--since=ISO-DATE]
 *   [--seed=N] [--out=FILE] [PATH...]
 * ```
 *
 * PATHs are `queueing.json` files or directories searched for them (default:
 * `bench/results/queueing.json` and `bench/results/reruns/`); runs that are
 * not full runs (`--quick`, `--smoke`) are left out, and so are runs before
 * `--since` and, with `--seed`, runs of other trace seeds. Writes the
 * report to FILE (default: standard output).
 *
 * @module
 */

import { join, relative } from "node:path";
import { parseArgs } from "node:util";
import { acrossRuns, renderAcross, type RunInput } from "./_runs.ts";
import { ROOT, type SystemName, SYSTEMS } from "./_systems.ts";

const USAGE =
  `Usage: deno run -R -W bench/queueing_runs.ts [--base=SYSTEM] [--since=ISO-DATE] [--seed=N] [--out=FILE] [PATH...]
  PATH            queueing.json files, or directories searched for *.json
                  (default: bench/results/queueing.json bench/results/reruns)
  --base=SYSTEM   the system the others are set against (default haproxy;
                  one of ${SYSTEMS.join(", ")})
  --since=DATE    leave out runs that started before DATE (e.g. 2026-12-07)
  --seed=N        only the runs whose traces had seed N
  --out=FILE      write the markdown report there (default: standard output)`;

async function* jsonFiles(path: string): AsyncGenerator<string> {
  const info = await Deno.stat(path);
  if (info.isFile) {
    yield path;
    return;
  }
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(path)) entries.push(e);
  entries.sort((a, b) => a.name.localeCompare(b.name));
  for (const e of entries) {
    const p = join(path, e.name);
    if (e.isDirectory) yield* jsonFiles(p);
    else if (e.isFile && e.name.endsWith(".json")) yield p;
  }
}

/**
 * Reads the full queueing runs under `paths`.
 *
 * @param paths files or directories.
 * @param since ISO date; earlier runs are left out.
 * @returns the runs, and the files left out with why.
 */
export async function readRuns(
  paths: string[],
  since = "",
): Promise<{ runs: RunInput[]; skipped: string[] }> {
  const runs: RunInput[] = [];
  const skipped: string[] = [];
  for (const path of paths) {
    for await (const file of jsonFiles(path)) {
      const name = relative(ROOT, file);
      let report;
      try {
        report = JSON.parse(await Deno.readTextFile(file));
      } catch (e) {
        skipped.push(`${name}: ${(e as Error).message}`);
        continue;
      }
      // Other benchmarks' reports share the directory: take only queueing's.
      if (!Array.isArray(report?.cells) || !Array.isArray(report?.gaps)) {
        continue;
      }
      if (report.plan?.mode !== "full") {
        skipped.push(`${name}: a ${report.plan?.mode ?? "unknown"} run`);
      } else if (String(report.date) < since) {
        skipped.push(`${name}: before ${since}`);
      } else {
        runs.push({
          name,
          date: String(report.date),
          build: report.versions?.pothead,
          seed: typeof report.plan?.seed === "number"
            ? report.plan.seed
            : undefined,
          orderOffset: typeof report.plan?.orderOffset === "number"
            ? report.plan.orderOffset
            : undefined,
          cells: report.cells,
          gaps: report.gaps,
        });
      }
    }
  }
  return { runs, skipped };
}

/**
 * Command-line entry point.
 *
 * @param args command-line arguments.
 * @returns exit code.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let values, positionals;
  try {
    ({ values, positionals } = parseArgs({
      args,
      options: {
        base: { type: "string", default: "haproxy" },
        since: { type: "string", default: "" },
        seed: { type: "string" },
        out: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      allowPositionals: true,
    }));
  } catch (e) {
    console.error(`${(e as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const base = values.base as SystemName;
  if (!SYSTEMS.includes(base)) {
    console.error(`Unknown --base system: ${values.base}\n${USAGE}`);
    return 2;
  }
  const seed = values.seed === undefined ? undefined : Number(values.seed);
  if (seed !== undefined && !Number.isInteger(seed)) {
    console.error(`Invalid --seed: ${values.seed}\n${USAGE}`);
    return 2;
  }
  const paths = positionals.length > 0 ? positionals : [
    join(ROOT, "bench/results/queueing.json"),
    join(ROOT, "bench/results/reruns"),
  ];
  let read;
  try {
    read = await readRuns(paths, values.since);
  } catch (e) {
    console.error(`Cannot read the runs: ${(e as Error).message}`);
    return 1;
  }
  for (const s of read.skipped) console.error(`left out ${s}`);
  if (read.runs.length === 0) {
    console.error("No full queueing run found.");
    return 1;
  }
  const command = ["deno run -R -W bench/queueing_runs.ts", ...args].join(" ");
  const across = acrossRuns(read.runs, { base, seed });
  if (across.runs.length === 0) {
    console.error(`No full queueing run of seed ${seed} found.`);
    return 1;
  }
  const text = renderAcross(across, command);
  if (values.out) {
    await Deno.writeTextFile(values.out, text);
    console.error(`wrote ${values.out} (${across.runs.length} runs)`);
  } else {
    console.log(text);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
