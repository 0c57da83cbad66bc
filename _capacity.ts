/**
 * Adaptive capacity (the original POTHEAD's `--poll-jobs`): a gate the worker
 * awaits before offering each slot to the hub, which lets another slot
 * through only while the machine has room, measured from Linux `/proc` and
 * the files of the cgroups (v2 or v1) that limit the process (`_cgroup.ts`).
 *
 * The measuring is done by pure functions on file contents
 * ({@linkcode parseProcStat}, {@linkcode cpuIdleFraction},
 * {@linkcode parseMeminfo}, {@linkcode capacityFrom}); only
 * {@linkcode readCapacitySample} and the gate touch the file system.
 *
 * @module
 */

import { join } from "node:path";
import {
  type CapacityRoots,
  type CgroupDir,
  cgroupDirs,
  type CgroupFiles,
  cgroupLimits,
  readCgroupFiles,
  readOptional,
} from "./_cgroup.ts";

export type { CapacityRoots } from "./_cgroup.ts";

/**
 * Awaited by the worker before it offers (connects) slot number `slot`;
 * resolving lets the slot connect. It must settle promptly when `signal`
 * aborts (the worker is draining or closing); the worker checks the signal
 * after it settles. Pass one as `WorkerOptions.gate`.
 *
 * {@linkcode capacityGate} makes one from CPU and memory readings; write
 * your own for any other resource.
 *
 * @example An extra rule on free GPU memory, beside CPU and memory
 * ```ts ignore
 * import {
 *   capacityGate,
 *   connectWorker,
 *   type SlotGate,
 * } from "@pothead/hub/worker";
 *
 * async function gpuFreeBytes(): Promise<number> {
 *   const { stdout } = await new Deno.Command("nvidia-smi", {
 *     args: ["--query-gpu=memory.free", "--format=csv,noheader,nounits"],
 *   }).output();
 *   return Number(new TextDecoder().decode(stdout).trim()) * 1024 * 1024;
 * }
 *
 * // Inside the CPU and memory gate, so the settle time covers it too.
 * const gate: SlotGate = capacityGate({
 *   admit: async () => (await gpuFreeBytes()) >= 2 * 1024 ** 3,
 * });
 * connectWorker((req) => new Response(req.url), { concurrency: 4, gate });
 * ```
 *
 * @example A gate of your own: slot 0 always, others while 2 GiB are free
 * ```ts ignore
 * import { connectWorker, type SlotGate } from "@pothead/hub/worker";
 *
 * declare function gpuFreeBytes(): Promise<number>;
 *
 * const gate: SlotGate = async (slot, signal) => {
 *   while (slot > 0 && !signal.aborted) {
 *     if ((await gpuFreeBytes()) >= 2 * 1024 ** 3) return;
 *     // Wait a second, or less if the worker stops.
 *     await new Promise<void>((resolve) => {
 *       const timer = setTimeout(done, 1000);
 *       signal.addEventListener("abort", done, { once: true });
 *       function done() {
 *         clearTimeout(timer);
 *         signal.removeEventListener("abort", done);
 *         resolve();
 *       }
 *     });
 *   }
 * };
 * connectWorker((req) => new Response(req.url), { concurrency: 4, gate });
 * ```
 */
export type SlotGate = (slot: number, signal: AbortSignal) => Promise<void>;

/** Cumulative CPU time counters from `/proc/stat`, in clock ticks. */
export interface CpuTimes {
  /** Idle and I/O-wait time of all CPUs. */
  idle: number;
  /** All time of all CPUs (user to steal). */
  total: number;
  /** Number of CPUs listed (`cpu0`, `cpu1`, ...). */
  cpus: number;
}

/**
 * Parses `/proc/stat`: the aggregate `cpu` line and the count of per-CPU
 * lines (proc(5)). Guest time is already inside user and nice, so it is not
 * added again.
 *
 * @throws {SyntaxError} when there is no valid `cpu` line.
 */
export function parseProcStat(text: string): CpuTimes {
  let times: number[] | null = null;
  let cpus = 0;
  for (const line of text.split("\n")) {
    if (/^cpu[0-9]+ /.test(line)) cpus++;
    else if (line.startsWith("cpu ")) {
      times = line.slice(4).trim().split(/\s+/).map(Number);
    }
  }
  if (times === null || times.length < 4 || times.some((n) => !(n >= 0))) {
    throw new SyntaxError(
      `Cannot parse /proc/stat: no valid "cpu" line in ${
        JSON.stringify(text.slice(0, 80))
      }`,
    );
  }
  // user nice system idle iowait irq softirq steal [guest guest_nice]
  const [, , , idle, iowait = 0] = times;
  let total = 0;
  for (let i = 0; i < Math.min(times.length, 8); i++) total += times[i];
  return { idle: idle + iowait, total, cpus: Math.max(cpus, 1) };
}

/**
 * The share of CPU time that was idle between two readings of
 * `/proc/stat`, from 0 (all busy) to 1 (all idle).
 *
 * @returns the fraction, or `null` when the counters did not advance (too
 *   little time between the readings to say).
 */
export function cpuIdleFraction(
  before: CpuTimes,
  after: CpuTimes,
): number | null {
  const total = after.total - before.total;
  if (!(total > 0)) return null;
  const idle = after.idle - before.idle;
  return Math.min(1, Math.max(0, idle / total));
}

/** Memory totals from `/proc/meminfo`, in bytes. */
export interface MemInfo {
  /** `MemTotal`. */
  total: number;
  /**
   * `MemAvailable`: what new work can use without swapping. Kernels before
   * 3.14 lack it; then `MemFree + Buffers + Cached` is used.
   */
  available: number;
}

/**
 * Parses `/proc/meminfo` (values in kB) into bytes.
 *
 * @throws {SyntaxError} when neither `MemAvailable` nor `MemFree` is there.
 */
export function parseMeminfo(text: string): MemInfo {
  const kb = new Map<string, number>();
  for (const line of text.split("\n")) {
    const m = /^([A-Za-z_()0-9]+):\s+([0-9]+)(?:\s+kB)?\s*$/.exec(line);
    if (m !== null) kb.set(m[1], Number(m[2]) * 1024);
  }
  const available = kb.get("MemAvailable") ??
    (kb.has("MemFree")
      ? kb.get("MemFree")! + (kb.get("Buffers") ?? 0) + (kb.get("Cached") ?? 0)
      : undefined);
  if (available === undefined) {
    throw new SyntaxError(
      `Cannot parse /proc/meminfo: no MemAvailable or MemFree in ${
        JSON.stringify(text.slice(0, 80))
      }`,
    );
  }
  return { total: kb.get("MemTotal") ?? available, available };
}

/** One reading of the files that {@linkcode capacityFrom} compares. */
export interface CapacitySample {
  /** When it was read, in milliseconds (`performance.now()`). */
  at: number;
  /** `/proc/stat`, if readable. */
  stat?: string;
  /** `/proc/meminfo`, if readable. */
  meminfo?: string;
  /** The files of each cgroup that limits the process (see `cgroupDirs`). */
  cgroups: CgroupFiles[];
}

/** What the gate measured between two readings (see {@linkcode capacityGate}). */
export interface CapacityUsage {
  /**
   * Idle CPUs: the machine's idle share times its CPUs, lowered to what any
   * cgroup quota leaves unused. `Infinity` when nothing was measurable.
   */
  idleCpu: number;
  /** CPUs available at all: the machine's, or a lower cgroup quota. */
  cpus: number;
  /** The machine's idle CPU share (0..1) from `/proc/stat`, or `null`. */
  idleFraction: number | null;
  /**
   * Bytes of memory new work can use: `MemAvailable`, lowered to any
   * cgroup's headroom. `Infinity` when nothing was measurable.
   */
  freeMemory: number;
  /** Milliseconds between the two samples. */
  elapsed: number;
}

/**
 * Compares two samples into idle CPU and free memory. Missing files limit
 * nothing; a limit is applied by each cgroup that sets one (a cgroup's CPU
 * use is its `usage_usec` delta over the elapsed time).
 *
 * @returns the usage, or `null` when `/proc/stat` did not advance between
 *   the samples (no CPU reading yet).
 * @throws {SyntaxError} when a file is present but unparsable.
 */
export function capacityFrom(
  before: CapacitySample,
  after: CapacitySample,
): CapacityUsage | null {
  const elapsed = after.at - before.at;
  let idleCpu = Infinity;
  let cpus = Infinity;
  let idleFraction: number | null = null;
  if (before.stat !== undefined && after.stat !== undefined) {
    const a = parseProcStat(before.stat);
    const b = parseProcStat(after.stat);
    idleFraction = cpuIdleFraction(a, b);
    if (idleFraction === null) return null;
    cpus = b.cpus;
    idleCpu = idleFraction * b.cpus;
  }
  let freeMemory = Infinity;
  if (after.meminfo !== undefined) {
    freeMemory = parseMeminfo(after.meminfo).available;
  }
  for (let i = 0; i < after.cgroups.length; i++) {
    const now = cgroupLimits(after.cgroups[i]);
    const then = before.cgroups[i] === undefined
      ? null
      : cgroupLimits(before.cgroups[i]);
    if (now.cpus !== null) {
      cpus = Math.min(cpus, now.cpus);
      let left = now.cpus;
      if (
        now.usageUsec !== null && then?.usageUsec != null && elapsed > 0
      ) {
        const used = (now.usageUsec - then.usageUsec) / (elapsed * 1000);
        left = Math.max(0, now.cpus - used);
      }
      idleCpu = Math.min(idleCpu, left);
    }
    if (now.memoryHeadroom !== null) {
      freeMemory = Math.min(freeMemory, now.memoryHeadroom);
    }
  }
  return { idleCpu, cpus, idleFraction, freeMemory, elapsed };
}

/**
 * Reads one sample of `/proc/stat`, `/proc/meminfo` and the cgroup files of
 * `dirs` (see {@linkcode cgroupDirs}). Missing files are left out.
 *
 * @throws {Deno.errors.NotCapable} when Deno may not read them: `/proc`
 *   and `/sys` need `--allow-all`.
 */
export async function readCapacitySample(
  dirs: CgroupDir[],
  roots: CapacityRoots = {},
): Promise<CapacitySample> {
  const procRoot = roots.procRoot ?? "/proc";
  const [stat, meminfo, cgroups] = await Promise.all([
    readOptional(join(procRoot, "stat")),
    readOptional(join(procRoot, "meminfo")),
    Promise.all(dirs.map(readCgroupFiles)),
  ]);
  return { at: performance.now(), stat, meminfo, cgroups };
}

/** Options for {@linkcode capacityGate}. Every field is optional. */
export interface CapacityOptions extends CapacityRoots {
  /**
   * Idle CPUs needed to admit another slot: about what one request uses. A
   * little under a whole CPU by default, because measured idle time is never
   * exactly whole (a 2-CPU machine running one CPU-bound request shows about
   * 0.9 idle).
   * @default {0.75}
   */
  minIdleCpu?: number;
  /**
   * Bytes of free memory (`MemAvailable`, or a cgroup's headroom if lower)
   * needed to admit another slot.
   * @default {268435456}
   */
  minFreeMemory?: number;
  /**
   * Milliseconds after admitting a slot before another may be admitted, so
   * the new slot's work shows in the readings first (no burst of slots on
   * one idle reading). The next reading must also start after the admission.
   * @default {2000}
   */
  settle?: number;
  /**
   * Milliseconds between readings while a slot waits; each reading measures
   * CPU over the time since the previous one.
   * @default {250}
   */
  interval?: number;
  /**
   * An extra rule, asked only when CPU and memory have room, e.g. free GPU
   * memory. Return false to keep the slot waiting; a throw fails that wait
   * (the worker reports it and tries again).
   */
  admit?: (usage: CapacityUsage, slot: number) => boolean | Promise<boolean>;
  /** Called with every reading while slots wait, e.g. for logs. */
  onSample?: (usage: CapacityUsage) => void;
}

interface Waiter {
  slot: number;
  resolve(): void;
  reject(error: unknown): void;
}

function checkOption(name: string, value: number, min: number): number {
  if (typeof value !== "number" || !(value >= min)) {
    throw new RangeError(
      `Invalid option "${name}": expected a number >= ${min}, got ${value}`,
    );
  }
  return value;
}

/**
 * Makes a {@linkcode SlotGate} that opens slots by the machine's load, like
 * the original POTHEAD's `--poll-jobs`: slot 0 always passes, so a worker
 * always serves; any other slot waits until a reading shows at least
 * `minIdleCpu` idle CPUs and `minFreeMemory` free bytes (and `admit`
 * agrees), and no other slot was admitted in the last `settle`
 * milliseconds.
 *
 * Readings come from `/proc/stat` and `/proc/meminfo` and from the files of
 * the process's cgroup and its ancestors, found through
 * `/proc/self/mountinfo`: with cgroup v2, `cpu.max` with the `usage_usec` of
 * `cpu.stat`, and `memory.max` with `memory.current` and `memory.stat`; with
 * cgroup v1, `cpu.cfs_quota_us` and `cpu.cfs_period_us` with
 * `cpuacct.usage`, and `memory.limit_in_bytes` with `memory.usage_in_bytes`
 * and `memory.stat`. A file that is missing (not Linux, no limit set) limits
 * nothing, so elsewhere only the settle time applies. A file
 * that exists but cannot be read fails the wait with that error; note that
 * Deno reads `/proc` and `/sys` only under `--allow-all` (`-A`), so a
 * worker using this gate must run with it.
 *
 * Waiting slots are admitted one at a time in the order they asked. Files
 * are read only while a slot waits. When the signal aborts, that wait
 * resolves at once (the caller checks `signal.aborted`) and leaves no timer.
 *
 * @param options thresholds, timing, an extra rule and the roots to read.
 * @returns a gate for `WorkerOptions.gate`.
 * @throws {RangeError} naming an invalid option.
 *
 * @example Four slots at most, each opened while a CPU is idle
 * ```ts ignore
 * import { capacityGate, connectWorker } from "@pothead/hub/worker";
 *
 * const worker = connectWorker((req) => new Response(req.url), {
 *   concurrency: 4,
 *   gate: capacityGate({ minIdleCpu: 0.9, minFreeMemory: 512 * 1024 ** 2 }),
 * });
 * await worker.finished;
 * ```
 */
export function capacityGate(options: CapacityOptions = {}): SlotGate {
  const minIdleCpu = checkOption("minIdleCpu", options.minIdleCpu ?? 0.75, 0);
  const minFreeMemory = checkOption(
    "minFreeMemory",
    options.minFreeMemory ?? 256 * 1024 * 1024,
    0,
  );
  const settle = checkOption("settle", options.settle ?? 2000, 0);
  const interval = checkOption("interval", options.interval ?? 250, 1);
  const roots = { procRoot: options.procRoot, cgroupRoot: options.cgroupRoot };
  const waiters: Waiter[] = [];
  let dirs: Promise<CgroupDir[]> | null = null;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let reading = false;
  let previous: CapacitySample | null = null;
  let lastAdmit = -Infinity;

  const schedule = () => {
    if (reading || timer !== undefined || waiters.length === 0) return;
    timer = setTimeout(tick, previous === null ? 0 : interval);
  };
  const stop = () => {
    if (timer !== undefined) clearTimeout(timer), timer = undefined;
    previous = null; // a stale reading must not span the pause
  };

  // One reading: admits the first waiter if there is room.
  async function step(): Promise<void> {
    const sample = await readCapacitySample(
      await (dirs ??= cgroupDirs(roots)),
      roots,
    );
    if (waiters.length === 0) return;
    const before = previous;
    previous = sample;
    if (before === null) return;
    const usage = capacityFrom(before, sample);
    if (usage === null) return;
    options.onSample?.(usage);
    if (
      before.at < lastAdmit || sample.at - lastAdmit < settle ||
      usage.idleCpu < minIdleCpu || usage.freeMemory < minFreeMemory
    ) {
      return;
    }
    const head = waiters[0];
    if (options.admit !== undefined) {
      let ok: boolean;
      try {
        ok = await options.admit(usage, head.slot);
      } catch (error) {
        const at = waiters.indexOf(head);
        if (at >= 0) waiters.splice(at, 1), head.reject(error);
        return;
      }
      if (!ok) return;
    }
    const at = waiters.indexOf(head);
    if (at < 0) return; // aborted while `admit` ran
    waiters.splice(at, 1);
    lastAdmit = sample.at;
    head.resolve();
  }

  async function tick(): Promise<void> {
    timer = undefined;
    reading = true;
    try {
      await step();
    } catch (error) {
      // Files that cannot be read or parsed (or a throwing onSample): fail
      // the waits loudly rather than guess there is room.
      dirs = null;
      previous = null;
      for (const w of waiters.splice(0)) w.reject(error);
    } finally {
      reading = false;
      if (waiters.length === 0) stop();
      else schedule();
    }
  }

  return (slot: number, signal: AbortSignal): Promise<void> => {
    if (slot === 0 || signal.aborted) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        const at = waiters.indexOf(waiter);
        if (at >= 0) waiters.splice(at, 1);
        if (waiters.length === 0 && !reading) stop();
        resolve();
      };
      const waiter: Waiter = {
        slot,
        resolve() {
          signal.removeEventListener("abort", onAbort);
          resolve();
        },
        reject(error) {
          signal.removeEventListener("abort", onAbort);
          reject(error);
        },
      };
      signal.addEventListener("abort", onAbort, { once: true });
      waiters.push(waiter);
      schedule();
    });
  };
}
