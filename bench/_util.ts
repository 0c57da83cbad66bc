/**
 * Shared pieces of the core benchmark: bounded subprocesses that are always
 * killed, readings from `/proc`, `wrk`, percentiles and machine facts.
 *
 * Every subprocess is bounded twice: a timer here kills it after its time
 * bound, and (where util-linux `setpriv` exists) the kernel kills it when
 * this process dies, however it dies (`PR_SET_PDEATHSIG`).
 *
 * @module
 */

import { fileURLToPath } from "node:url";

/** Repository root (the directory above `bench/`). */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));
/** The deno binary running this benchmark; children use the same one. */
export const DENO: string = Deno.execPath();
/** Kernel clock ticks per second for `/proc/<pid>/stat` times. */
export const CLK_TCK = 100;

const encoder = new TextEncoder();

// ---------------------------------------------------------------- processes

const live = new Set<Proc>();
let cleanupInstalled = false;

/** Kills every subprocess still running (SIGKILL), synchronously. */
export function killAll(): void {
  for (const p of live) p.kill("SIGKILL");
}

function installCleanup(): void {
  if (cleanupInstalled) return;
  cleanupInstalled = true;
  globalThis.addEventListener("unload", killAll);
  const onSignal = () => {
    killAll();
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
}

/** Options for {@linkcode spawn}. */
export interface SpawnOptions {
  /** Label for errors. */
  name: string;
  /** Hard bound on the process's life in seconds (SIGKILL after it). */
  maxSeconds: number;
  /** Raise the open-file limit to this before exec (needs the hard limit). */
  fdLimit?: number;
  /** Extra environment. */
  env?: Record<string, string>;
  /** Pipe stdin (for children that wait for a line). */
  stdin?: boolean;
}

/** A running subprocess whose pid is the real program's, not a wrapper's. */
export class Proc {
  /** Label for errors. */
  readonly name: string;
  /** The program's own pid (what `/proc` readings use). */
  readonly pid: number;
  /** The child handle. */
  readonly child: Deno.ChildProcess;
  /** Every stdout line so far. */
  readonly lines: string[] = [];
  /** The last 16 KiB of stderr. */
  stderr = "";
  #waiters: { re: RegExp; resolve(m: RegExpMatchArray): void }[] = [];
  #exited = false;
  #status: Promise<Deno.CommandStatus>;
  #stdin: WritableStreamDefaultWriter<Uint8Array> | null = null;

  constructor(
    child: Deno.ChildProcess,
    name: string,
    stdin: boolean,
    maxSeconds: number,
  ) {
    this.child = child;
    this.pid = child.pid;
    this.name = name;
    const bound = setTimeout(() => this.kill("SIGKILL"), maxSeconds * 1000);
    Deno.unrefTimer(bound);
    const stdoutRead = this.#pump(child.stdout, (line) => {
      this.lines.push(line);
      if (this.lines.length > 10_000) this.lines.splice(0, 5_000);
      for (let i = 0; i < this.#waiters.length; i++) {
        const m = line.match(this.#waiters[i].re);
        if (m !== null) {
          this.#waiters[i].resolve(m);
          this.#waiters.splice(i--, 1);
        }
      }
    });
    // Lines still in the pipe when the process exits are read before a
    // waiter hears of the exit (it once failed waiting for a last line
    // that was printed). Bounded: a grandchild may hold the pipe open.
    this.#status = child.status.then(async (s) => {
      clearTimeout(bound);
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([
        stdoutRead,
        new Promise((resolve) => timer = setTimeout(resolve, 2000)),
      ]);
      clearTimeout(timer);
      this.#exited = true;
      live.delete(this);
      for (const w of this.#waiters.splice(0)) {
        w.resolve(null as unknown as RegExpMatchArray);
      }
      return s;
    });
    if (stdin) this.#stdin = child.stdin.getWriter();
    this.#pump(child.stderr, (line) => {
      this.stderr = (this.stderr + line + "\n").slice(-16 * 1024);
    });
  }

  async #pump(
    stream: ReadableStream<Uint8Array>,
    onLine: (line: string) => void,
  ): Promise<void> {
    let rest = "";
    try {
      for await (
        const text of stream.pipeThrough(new TextDecoderStream())
      ) {
        rest += text;
        let nl;
        while ((nl = rest.indexOf("\n")) >= 0) {
          onLine(rest.slice(0, nl));
          rest = rest.slice(nl + 1);
        }
      }
    } catch {
      // the process went away
    }
    if (rest !== "") onLine(rest);
  }

  /** True once the process has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  /** Resolves with the exit status. */
  get status(): Promise<Deno.CommandStatus> {
    return this.#status;
  }

  /**
   * Waits for a stdout line matching `re` (also among lines already read).
   * @throws {Error} after `ms` or if the process exits first.
   */
  async waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray> {
    for (const line of this.lines) {
      const m = line.match(re);
      if (m !== null) return m;
    }
    if (this.#exited) throw this.#error(`exited before printing ${re}`);
    const { promise, resolve } = Promise.withResolvers<RegExpMatchArray>();
    const waiter = { re, resolve };
    this.#waiters.push(waiter);
    const timer = setTimeout(
      () => resolve(null as unknown as RegExpMatchArray),
      ms,
    );
    const m = await promise;
    clearTimeout(timer);
    const i = this.#waiters.indexOf(waiter);
    if (i >= 0) this.#waiters.splice(i, 1);
    if (m === null) {
      throw this.#error(
        this.#exited
          ? `exited before printing ${re}`
          : `printed no line matching ${re} within ${ms} ms`,
      );
    }
    return m;
  }

  /** Writes a line to the child's stdin (if piped). */
  async send(line: string): Promise<void> {
    await this.#stdin?.write(encoder.encode(line + "\n"));
  }

  #error(what: string): Error {
    return new Error(
      `${this.name} ${what}; stdout: ${
        JSON.stringify(this.lines.slice(-5))
      }; stderr: ${JSON.stringify(this.stderr.slice(-2000))}`,
    );
  }

  /** Sends a signal to the program. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.#exited) return;
    try {
      Deno.kill(this.pid, signal);
    } catch {
      // already gone
    }
  }

  /**
   * Stops the process: `signal` first, SIGKILL after `graceMs`. Resolves once
   * it has exited. Never rejects.
   */
  async stop(signal: Deno.Signal = "SIGTERM", graceMs = 3000): Promise<void> {
    if (this.#exited) return;
    this.kill(signal);
    const timer = setTimeout(() => this.kill("SIGKILL"), graceMs);
    try {
      await this.#status;
    } finally {
      clearTimeout(timer);
    }
    try {
      await this.#stdin?.close();
    } catch {
      // the pipe is gone with the process
    }
  }
}

let setpriv: boolean | undefined;

/**
 * Starts `cmd` (with a raised fd limit when asked). The program replaces the
 * shell, so its pid is the child's pid; `setpriv --pdeathsig KILL` ties its
 * life to this process where available.
 */
export async function spawn(
  cmd: string[],
  options: SpawnOptions,
): Promise<Proc> {
  installCleanup();
  setpriv ??= await new Deno.Command("setpriv", {
    args: ["--pdeathsig", "KILL", "true"],
    stdout: "null",
    stderr: "null",
  }).output().then((o) => o.success, () => false);
  const ulimit = options.fdLimit
    ? `ulimit -n ${options.fdLimit} 2>/dev/null || ulimit -n "$(ulimit -Hn)"; `
    : "";
  const child = new Deno.Command("sh", {
    args: [
      "-c",
      `${ulimit}exec ${setpriv ? "setpriv --pdeathsig KILL " : ""}"$@"`,
      "sh",
      ...cmd,
    ],
    cwd: ROOT,
    env: options.env,
    stdin: options.stdin ? "piped" : "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const proc = new Proc(
    child,
    options.name,
    options.stdin ?? false,
    options.maxSeconds,
  );
  live.add(proc);
  return proc;
}

/** Stops every given process; never rejects. */
export async function stopAll(procs: (Proc | undefined)[]): Promise<void> {
  await Promise.all(procs.map((p) => p?.stop()));
}

/**
 * Writes a benchmark's report to `dir` as `NAME.md` (`markdown`) and
 * `NAME.json` (`report`), and says so.
 */
export async function writeReport(
  dir: string,
  name: string,
  markdown: string,
  report: unknown,
): Promise<void> {
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(`${dir}/${name}.md`, markdown);
  await Deno.writeTextFile(
    `${dir}/${name}.json`,
    JSON.stringify(report, null, 2) + "\n",
  );
  console.log(`wrote ${dir}/${name}.md and ${name}.json`);
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** Rejects with a message naming `what` if `promise` takes over `ms`. */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${what} took longer than ${ms} ms`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

// ------------------------------------------------------------- the servers

/** A hub CLI subprocess. */
export interface HubProc {
  proc: Proc;
  /** Consumer port. */
  port: number;
  /** Worker port. */
  workerPort: number;
}

/** Starts `hub.ts` on loopback, ports picked by the OS. */
export async function startHub(
  options: {
    args?: string[];
    denoFlags?: string[];
    fdLimit?: number;
    maxSeconds: number;
  },
): Promise<HubProc> {
  const proc = await spawn([
    DENO,
    "run",
    "-A",
    // As `deno task start` runs it (see deno.json).
    ...(options.denoFlags ?? ["--unstable-no-legacy-abort"]),
    "hub.ts",
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--worker-port",
    "0",
    "--log-level",
    "warn",
    "--shutdown-grace",
    "1s",
    ...(options.args ?? []),
  ], {
    name: "hub",
    maxSeconds: options.maxSeconds,
    fdLimit: options.fdLimit,
  });
  try {
    return { proc, ...await listeningPorts(proc) };
  } catch (error) {
    await proc.stop("SIGKILL");
    throw error;
  }
}

/**
 * Waits for a hub's two "Listening on" lines (the hub CLI's, or a bench
 * relay's that prints the same) and returns the consumer and worker ports.
 */
export async function listeningPorts(
  proc: Proc,
): Promise<{ port: number; workerPort: number }> {
  const c = await proc.waitFor(
    /Listening on http:\/\/.*:(\d+)\/ \(consumers\)/,
    30_000,
  );
  const w = await proc.waitFor(
    /Listening on tcp:\/\/.*:(\d+)\/ \(workers\)/,
    30_000,
  );
  return { port: Number(c[1]), workerPort: Number(w[1]) };
}

/** Starts `worker.ts` processes serving `handler` and waits until each connected. */
export async function startWorkers(
  options: {
    count: number;
    concurrency: number;
    handler: string;
    workerPort: number;
    maxSeconds: number;
    /** Extra worker CLI flags (e.g. `--engine inline`). */
    args?: string[];
  },
): Promise<Proc[]> {
  const procs: Proc[] = [];
  try {
    for (let i = 0; i < options.count; i++) {
      procs.push(
        await spawn([
          DENO,
          "run",
          "-A",
          "worker.ts",
          "--connect",
          `127.0.0.1:${options.workerPort}`,
          "--concurrency",
          String(options.concurrency),
          ...(options.args ?? []),
          options.handler,
        ], { name: `worker ${i + 1}`, maxSeconds: options.maxSeconds }),
      );
    }
    for (const p of procs) await p.waitFor(/^Connected to /, 30_000);
    // "Connected" follows the first slot; the others dial at the same time.
    await sleep(300);
    return procs;
  } catch (error) {
    await stopAll(procs);
    throw error;
  }
}

/** A plain `Deno.serve` subprocess serving a handler module. */
export interface DirectProc {
  proc: Proc;
  port: number;
}

/** Starts `bench/workers/serve.ts` with `handler` on loopback. */
export async function startDirect(
  options: { handler: string; maxSeconds: number; fdLimit?: number },
): Promise<DirectProc> {
  const proc = await spawn([
    DENO,
    "run",
    "-A",
    "bench/workers/serve.ts",
    options.handler,
  ], {
    name: "Deno.serve",
    maxSeconds: options.maxSeconds,
    fdLimit: options.fdLimit,
  });
  try {
    const m = await proc.waitFor(/^Listening on http:\/\/.*:(\d+)\//, 30_000);
    return { proc, port: Number(m[1]) };
  } catch (error) {
    await proc.stop("SIGKILL");
    throw error;
  }
}

// ------------------------------------------------------------------- /proc

/** CPU time (user + system, all threads) of `pid` in seconds. */
export function cpuSeconds(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  // Fields 14 and 15 of stat; f[0] is field 3.
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/**
 * CPU time in seconds of this process's reaped children (cutime + cstime),
 * which is how a finished `wrk` is charged.
 */
export function reapedChildrenCpuSeconds(): number {
  const stat = Deno.readTextFileSync(`/proc/self/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** Own CPU time of this process in seconds. */
export function selfCpuSeconds(): number {
  return cpuSeconds(Deno.pid);
}

function statusField(pid: number, field: string): number {
  const text = Deno.readTextFileSync(`/proc/${pid}/status`);
  const m = text.match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
  if (m === null) throw new Error(`No ${field} in /proc/${pid}/status`);
  return Number(m[1]);
}

/** Resident set size of `pid` in KiB (VmRSS). */
export function rssKiB(pid: number): number {
  return statusField(pid, "VmRSS");
}

/** Peak resident set size of `pid` in KiB (VmHWM). */
export function peakRssKiB(pid: number): number {
  return statusField(pid, "VmHWM");
}

/**
 * Resets the kernel's peak-RSS mark of `pid` (writes 5 to clear_refs).
 * Returns false where that is not permitted.
 */
export function resetPeakRss(pid: number): boolean {
  try {
    Deno.writeTextFileSync(`/proc/${pid}/clear_refs`, "5");
    return true;
  } catch {
    return false;
  }
}

/** Open file descriptors of `pid`. */
export function fdCount(pid: number): number {
  let n = 0;
  for (const _ of Deno.readDirSync(`/proc/${pid}/fd`)) n++;
  return n;
}

/** Whole-machine CPU counters (all cores) in seconds: busy and total. */
export function machineCpu(): { busy: number; total: number } {
  const line = Deno.readTextFileSync("/proc/stat").split("\n")[0];
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = v[3] + (v[4] ?? 0);
  return { busy: (total - idle) / CLK_TCK, total: total / CLK_TCK };
}

/** The 1-minute load average. */
export function loadAverage(): number {
  return Number(Deno.readTextFileSync("/proc/loadavg").split(" ")[0]);
}

// -------------------------------------------------------------------- wrk

/** What `wrk` reported. */
export interface WrkResult {
  requests: number;
  seconds: number;
  rps: number;
  /** Latency percentiles in milliseconds (from `--latency`). */
  p50: number;
  p75: number;
  p90: number;
  p99: number;
  socketErrors: string;
  non2xx: number;
  /** CPU seconds wrk itself used. */
  wrkCpu: number;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  return unit === "us"
    ? n / 1000
    : unit === "s"
    ? n * 1000
    : unit === "m"
    ? n * 60_000
    : n;
}

/** Parses `wrk --latency` output. */
export function parseWrk(text: string): Omit<WrkResult, "wrkCpu"> {
  const req = text.match(/(\d+) requests in ([\d.]+)(us|ms|s|m)/);
  if (req === null) throw new Error(`Cannot parse wrk output: ${text}`);
  const pct = (p: string) => {
    const m = text.match(new RegExp(`^\\s+${p}%\\s+([\\d.]+)(us|ms|s|m)`, "m"));
    return m === null ? NaN : toMs(m[1], m[2]);
  };
  const se = text.match(/Socket errors: (.*)/);
  const non = text.match(/Non-2xx or 3xx responses: (\d+)/);
  const seconds = toMs(req[2], req[3]) / 1000;
  return {
    requests: Number(req[1]),
    seconds,
    rps: Number(req[1]) / seconds,
    p50: pct("50"),
    p75: pct("75"),
    p90: pct("90"),
    p99: pct("99"),
    socketErrors: se === null ? "none" : se[1].trim(),
    non2xx: non === null ? 0 : Number(non[1]),
  };
}

/** Runs `wrk --latency` for `seconds` (bounded: killed 20 s after). */
export async function runWrk(
  options: {
    url: string;
    threads: number;
    connections: number;
    seconds: number;
  },
): Promise<WrkResult> {
  installCleanup();
  const before = reapedChildrenCpuSeconds();
  const out = await new Deno.Command("wrk", {
    args: [
      `-t${options.threads}`,
      `-c${options.connections}`,
      `-d${options.seconds}s`,
      "--timeout",
      "5s",
      "--latency",
      options.url,
    ],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout((options.seconds + 20) * 1000),
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(
      `wrk failed (${out.code}): ${text} ${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  return { ...parseWrk(text), wrkCpu: reapedChildrenCpuSeconds() - before };
}

/** Whether `wrk` is on PATH. */
export async function haveWrk(): Promise<boolean> {
  try {
    const out = await new Deno.Command("wrk", {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.code === 0 || out.code === 1;
  } catch {
    return false;
  }
}

// ------------------------------------------------------------------ numbers

/** Nearest-rank percentile `p` (0..100) of `sorted` (ascending). */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1];
}

/** The middle value of `sorted` (ascending), or the mean of the two middle ones. */
export function median(sorted: number[]): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  return n % 2 ? sorted[(n - 1) / 2] : (sorted[n / 2 - 1] + sorted[n / 2]) / 2;
}

/** Rounds to `digits` decimals. */
/**
 * Milliseconds for a report's table: whole from 100 up, else one decimal;
 * "–" for no figure.
 */
export function formatMs(n: number): string {
  if (!Number.isFinite(n)) return "–";
  return n >= 100 ? n.toFixed(0) : n.toFixed(1);
}

/**
 * A numeric command-line flag: `fallback` when absent.
 *
 * @throws {RangeError} naming the flag when `valid` refuses the value.
 */
export function numberFlag(
  name: string,
  text: string | undefined,
  fallback: number,
  valid: (n: number) => boolean,
  expected: string,
): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!valid(n)) {
    throw new RangeError(
      `Invalid --${name}: expected ${expected}, got "${text}"`,
    );
  }
  return n;
}

export function round(n: number, digits = 2): number {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
}

// ------------------------------------------------------------------ machine

/** Facts about the machine the benchmark ran on. */
export interface MachineInfo {
  date: string;
  uname: string;
  cpuModel: string;
  cpus: number;
  deno: string;
  v8: string;
  wrk: string;
  loadAverageAtStart: number;
}

/** Collects {@linkcode MachineInfo}. */
export async function machineInfo(): Promise<MachineInfo> {
  const run = async (cmd: string, args: string[]) => {
    try {
      const out = await new Deno.Command(cmd, {
        args,
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(out.stdout) +
        new TextDecoder().decode(out.stderr);
      return text.trim().split("\n")[0];
    } catch {
      return "unavailable";
    }
  };
  const cpuinfo = Deno.readTextFileSync("/proc/cpuinfo");
  const model = cpuinfo.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? "unknown";
  const cpus = (cpuinfo.match(/^processor\s*:/gm) ?? []).length;
  return {
    date: new Date().toISOString(),
    uname: await run("uname", ["-a"]),
    cpuModel: model,
    cpus,
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    wrk: await run("wrk", ["--version"]),
    loadAverageAtStart: loadAverage(),
  };
}

// ------------------------------------------------------------ CPU profiles

/** One function's share of a V8 CPU profile. */
export interface ProfileEntry {
  /** Function name and `file:line` (1-based). */
  fn: string;
  /** Milliseconds sampled with this function on top of the stack. */
  selfMs: number;
  /** Milliseconds sampled with this function anywhere on the stack. */
  totalMs: number;
}

/** A summary of a `.cpuprofile` written by `deno run --cpu-prof`. */
export interface ProfileSummary {
  /** Profiled wall time, ms. */
  wallMs: number;
  /** Sampled time outside `(idle)`, ms (JS, GC and runtime on the JS thread). */
  busyMs: number;
  /** Top functions by self time and by total time. */
  bySelf: ProfileEntry[];
  byTotal: ProfileEntry[];
}

interface CpuProfile {
  nodes: {
    id: number;
    callFrame: { functionName: string; url: string; lineNumber: number };
    children?: number[];
  }[];
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** Summarizes a V8 CPU profile: where the sampled time went, by function. */
export function summarizeCpuProfile(
  profile: CpuProfile,
  top = 25,
): ProfileSummary {
  const parent = new Map<number, number>();
  const key = new Map<number, string>();
  for (const n of profile.nodes) {
    for (const c of n.children ?? []) parent.set(c, n.id);
    const f = n.callFrame;
    const file = f.url.replace(/^file:\/\/\/work\/main\//, "").replace(
      /^.*\/(ext|node):/,
      "$1:",
    );
    key.set(
      n.id,
      file === ""
        ? f.functionName || "(anonymous)"
        : `${f.functionName || "(anonymous)"} ${file}:${f.lineNumber + 1}`,
    );
  }
  const self = new Map<string, number>();
  const total = new Map<string, number>();
  let busyUs = 0;
  for (let i = 0; i < profile.samples.length; i++) {
    const dt = profile.timeDeltas[i + 1] ?? profile.timeDeltas[i] ?? 0;
    const id = profile.samples[i];
    const k = key.get(id) ?? "?";
    self.set(k, (self.get(k) ?? 0) + dt);
    if (k === "(idle)") continue;
    busyUs += dt;
    const seen = new Set<string>();
    for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
      const kk = key.get(n) ?? "?";
      if (kk === "(root)" || seen.has(kk)) continue;
      seen.add(kk);
      total.set(kk, (total.get(kk) ?? 0) + dt);
    }
  }
  const list = (m: Map<string, number>, field: "selfMs" | "totalMs") =>
    [...m.entries()]
      .filter(([k]) => k !== "(idle)")
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([fn, us]) => ({
        fn,
        selfMs: round((field === "selfMs" ? us : self.get(fn) ?? 0) / 1000, 1),
        totalMs: round(
          (field === "totalMs" ? us : total.get(fn) ?? 0) / 1000,
          1,
        ),
      }));
  return {
    wallMs: round((profile.endTime - profile.startTime) / 1000, 1),
    busyMs: round(busyUs / 1000, 1),
    bySelf: list(self, "selfMs"),
    byTotal: list(total, "totalMs"),
  };
}

/** Reads and summarizes the newest `.cpuprofile` in `dir`. */
export async function summarizeNewestProfile(
  dir: string,
  top = 25,
): Promise<ProfileSummary & { file: string }> {
  let newest: { name: string; mtime: number } | null = null;
  for await (const e of Deno.readDir(dir)) {
    if (!e.name.endsWith(".cpuprofile")) continue;
    const mtime = (await Deno.stat(`${dir}/${e.name}`)).mtime?.getTime() ?? 0;
    if (newest === null || mtime > newest.mtime) {
      newest = { name: e.name, mtime };
    }
  }
  if (newest === null) throw new Error(`No .cpuprofile in ${dir}`);
  const file = `${dir}/${newest.name}`;
  const profile = JSON.parse(await Deno.readTextFile(file)) as CpuProfile;
  return { file, ...summarizeCpuProfile(profile, top) };
}
