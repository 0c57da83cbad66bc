/**
 * The systems of the queueing benchmark as child processes: K one-at-a-time
 * backend workers, HAProxy (`maxconn 1` per server: its central queue),
 * nginx (round-robin and `least_conn`), and POTHEAD (the hub CLI with K
 * `worker.ts --concurrency 1` workers).
 *
 * Every child runs under `timeout -s KILL` in its own process group, so it
 * dies within its bound even if the benchmark is killed; {@linkcode killAll}
 * (installed on SIGINT, SIGTERM and unload) ends them at once.
 *
 * @module
 */

import { join } from "node:path";
import { fileURLToPath } from "node:url";
import type { ServiceMode } from "./workers/serial_worker.ts";

/** Repository root. */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** The systems the benchmark knows, in report order. */
export const SYSTEMS = [
  "pothead",
  "pothead-hold",
  "haproxy",
  "haproxy-b",
  "nginx-rr",
  "nginx-lc",
] as const;
/** One of {@linkcode SYSTEMS}. */
export type SystemName = typeof SYSTEMS[number];

/** Human names for the report. */
export const SYSTEM_LABELS: Record<SystemName, string> = {
  "pothead": "POTHEAD",
  "pothead-hold": "POTHEAD --hold-ahead",
  "haproxy": "HAProxy maxconn 1",
  "haproxy-b": "HAProxy maxconn 1 (2nd, control)",
  "nginx-rr": "nginx round-robin",
  "nginx-lc": "nginx least_conn",
};

const live = new Set<Child>();

/**
 * Sets the scheduling priority of this process (every thread); children
 * started after it inherit it. Values below 0 need root. On a shared
 * machine a negative value keeps other jobs from adding their noise to the
 * measurements; every system gets the same value, so the comparison stays
 * fair.
 *
 * @param value nice value, -20..19.
 * @returns whether it took effect.
 */
export async function setNiceness(value: number): Promise<boolean> {
  if (!Number.isInteger(value) || value < -20 || value > 19) {
    throw new RangeError(`Invalid nice value: expected -20..19, got ${value}`);
  }
  const threads: string[] = [];
  try {
    for (const entry of Deno.readDirSync("/proc/self/task")) {
      threads.push(entry.name);
    }
  } catch {
    return false;
  }
  try {
    const out = await new Deno.Command("renice", {
      args: ["-n", String(value), "-p", ...threads],
      stdout: "null",
      stderr: "null",
    }).output();
    return out.success;
  } catch {
    return false;
  }
}
let cleanupInstalled = false;

/** SIGKILLs every child still running (and its process group). */
export function killAll(): void {
  for (const child of live) child.killNow();
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

/** A child process with its output read line by line. */
export class Child {
  /** Label for messages. */
  readonly name: string;
  #process: Deno.ChildProcess;
  #tail: string[] = [];
  #waiters: { re: RegExp; resolve: (m: RegExpMatchArray | null) => void }[] =
    [];
  #status: Promise<Deno.CommandStatus>;
  #exited = false;

  constructor(
    name: string,
    command: string,
    args: string[],
    options: { env?: Record<string, string>; maxSeconds: number },
  ) {
    installCleanup();
    this.name = name;
    // `timeout` puts itself and the program in a new process group and
    // SIGKILLs it after maxSeconds; a SIGTERM to it is passed on.
    // Children inherit this process's nice value (see setNiceness).
    this.#process = new Deno.Command("timeout", {
      args: [
        "-s",
        "KILL",
        String(Math.ceil(options.maxSeconds)),
        command,
        ...args,
      ],
      cwd: ROOT,
      env: { NO_COLOR: "1", DENO_NO_UPDATE_CHECK: "1", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    live.add(this);
    this.#status = this.#process.status.then((status) => {
      this.#exited = true;
      live.delete(this);
      for (const w of this.#waiters.splice(0)) w.resolve(null);
      return status;
    });
    this.#pump(this.#process.stdout);
    this.#pump(this.#process.stderr);
  }

  /** The last lines the child printed (stdout and stderr). */
  get output(): string {
    return this.#tail.join("\n");
  }

  /** Whether the child has exited. */
  get exited(): boolean {
    return this.#exited;
  }

  async #pump(stream: ReadableStream<Uint8Array>): Promise<void> {
    let rest = "";
    try {
      for await (const text of stream.pipeThrough(new TextDecoderStream())) {
        rest += text;
        for (let nl = rest.indexOf("\n"); nl >= 0; nl = rest.indexOf("\n")) {
          this.#line(rest.slice(0, nl));
          rest = rest.slice(nl + 1);
        }
      }
      if (rest) this.#line(rest);
    } catch {
      // The process went away; its status says how.
    }
  }

  #line(line: string): void {
    this.#tail.push(line);
    if (this.#tail.length > 40) this.#tail.shift();
    for (let i = 0; i < this.#waiters.length; i++) {
      const m = line.match(this.#waiters[i].re);
      if (m !== null) {
        this.#waiters[i].resolve(m);
        this.#waiters.splice(i--, 1);
      }
    }
  }

  /**
   * Waits for an output line matching `re`.
   *
   * @throws {Error} if the child exits or `timeoutMs` passes first.
   */
  async waitFor(re: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
    for (const line of this.#tail) {
      const m = line.match(re);
      if (m !== null) return m;
    }
    if (this.#exited) throw this.#failure(`exited before printing ${re}`);
    const { promise, resolve } = Promise.withResolvers<
      RegExpMatchArray | null
    >();
    const waiter = { re, resolve };
    this.#waiters.push(waiter);
    const timer = setTimeout(() => {
      this.#waiters.splice(this.#waiters.indexOf(waiter), 1);
      resolve(null);
    }, timeoutMs);
    const m = await promise;
    clearTimeout(timer);
    if (m === null) throw this.#failure(`did not print ${re}`);
    return m;
  }

  #failure(what: string): Error {
    return new Error(`${this.name} ${what}; its output:\n${this.output}`);
  }

  /**
   * The program's own pid (the child of the `timeout` wrapper), or the
   * wrapper's if it cannot be read.
   */
  get pid(): number {
    const wrapper = this.#process.pid;
    try {
      const text = Deno.readTextFileSync(
        `/proc/${wrapper}/task/${wrapper}/children`,
      ).trim();
      return Number(text.split(" ")[0]) || wrapper;
    } catch {
      return wrapper;
    }
  }

  /** SIGKILLs the child's process group at once. */
  killNow(): void {
    if (this.#exited) return;
    try {
      Deno.kill(-this.#process.pid, "SIGKILL");
    } catch {
      // Already gone.
    }
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once it has exited. */
  async stop(graceMs = 2000): Promise<void> {
    if (!this.#exited) {
      try {
        this.#process.kill("SIGTERM");
      } catch {
        // Already gone.
      }
      const timer = setTimeout(() => this.killNow(), graceMs);
      await this.#status;
      clearTimeout(timer);
    }
    await this.#status;
  }
}

/** A free loopback TCP port (bound on port 0, then released). */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** Polls until `port` accepts a TCP connection. */
export async function waitForPort(
  port: number,
  timeoutMs: number,
  child?: Child,
): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (child?.exited) break;
    try {
      const conn = await Deno.connect({ hostname: "127.0.0.1", port });
      conn.close();
      return;
    } catch {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  throw new Error(
    `Port ${port} did not accept connections${
      child ? `; ${child.name} said:\n${child.output}` : ""
    }`,
  );
}

async function commandOutput(command: string, args: string[]): Promise<string> {
  try {
    const out = await new Deno.Command(command, {
      args,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(10_000),
    }).output();
    const text = new TextDecoder().decode(out.stdout) +
      new TextDecoder().decode(out.stderr);
    return out.success ? text.trim() : "";
  } catch {
    return "";
  }
}

/** Whether a program is on PATH. */
export async function haveProgram(name: string): Promise<boolean> {
  return (await commandOutput("sh", ["-c", `command -v ${name}`])) !== "";
}

/**
 * Makes sure a Debian package's program is present: installs the package
 * with apt-get when it is missing and we are root (bounded to 5 minutes).
 *
 * @returns whether the program is present afterwards.
 */
export async function ensureProgram(
  program: string,
  pkg: string,
  log: (line: string) => void,
): Promise<boolean> {
  if (await haveProgram(program)) return true;
  if (Deno.uid?.() !== 0) {
    log(`${program} is missing and we are not root: skipping it`);
    return false;
  }
  log(`${program} is missing: apt-get install -y ${pkg}`);
  const install = async () => {
    const out = await new Deno.Command("apt-get", {
      args: ["install", "-y", "-qq", pkg],
      env: { DEBIAN_FRONTEND: "noninteractive" },
      stdout: "null",
      stderr: "piped",
      signal: AbortSignal.timeout(300_000),
    }).output().catch(() => null);
    return out?.success ?? false;
  };
  if (!await install()) {
    await new Deno.Command("apt-get", {
      args: ["update", "-qq"],
      stdout: "null",
      stderr: "null",
      signal: AbortSignal.timeout(300_000),
    }).output().catch(() => null);
    await install();
  }
  return await haveProgram(program);
}

/** Versions of the programs involved, for the report. */
export async function versions(): Promise<Record<string, string>> {
  const first = (text: string) => text.split("\n")[0] || "unavailable";
  return {
    deno: `deno ${Deno.version.deno}`,
    // The build measured, so runs taken together can say which code each had.
    pothead: first(
      await commandOutput("git", [
        "-C",
        ROOT,
        "describe",
        "--always",
        "--dirty",
      ]),
    ),
    haproxy: first(await commandOutput("haproxy", ["-v"])),
    nginx: first(await commandOutput("nginx", ["-v"])),
  };
}

/** CPU time (user + system) a process has used, ms; NaN if unknown. */
export function cpuMs(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(fields[11]) + Number(fields[12])) * 10; // 100 ticks/s
  } catch {
    return NaN;
  }
}

/** A running system the load generator can send requests to. */
export interface System {
  /** Which system. */
  name: SystemName;
  /** The URL consumers send requests to. */
  url: string;
  /** Pids of the balancer process(es): hub, haproxy or nginx. */
  balancerPids: number[];
  /** Pids of the worker processes behind it. */
  workerPids: number[];
  /** The POTHEAD hub's Prometheus metrics (its admin listener). */
  metricsUrl?: string;
}

/** Options for {@linkcode startSystems}. */
export interface StartOptions {
  /** Workers per system (each serves one request at a time). */
  workers: number;
  /** How a job spends its time. */
  mode: ServiceMode;
  /** Directory for configuration files. */
  dir: string;
  /** Hard bound on every child's life, in seconds. */
  maxSeconds: number;
  /** Extra flags for the POTHEAD hub (e.g. `--trust-priority`). */
  hubArgs?: string[];
  /** The POTHEAD workers' handler module (default `bench/workers/pothead_job.ts`). */
  handler?: string;
  /** Extra environment for the POTHEAD workers. */
  workerEnv?: Record<string, string>;
}

/** A set of running systems; `stop()` ends every process of them. */
export interface Systems {
  /** The systems started, in the order asked. */
  systems: System[];
  /** Stops every child process. */
  stop(): Promise<void>;
}

const DENO = Deno.execPath();
const STARTUP_MS = 30_000;
// Every Deno process (hub, POTHEAD workers, the backends behind HAProxy and
// nginx) runs as `deno task start` / `deno task worker` run it: without
// Deno 2.9's legacy abort of every request signal after its response.
const LEGACY_ABORT_OFF = "--unstable-no-legacy-abort";
// Every worker process (POTHEAD's and the serial ones behind HAProxy and
// nginx; never the hub) runs without V8's memory reducer. It starts major
// GCs in a process that has gone quiet, and the benchmark's 16 workers,
// started together and idle together while other systems run, then ran
// them in lockstep: 13 mark-compacts within 230 ms and 12 more 0.6 s
// later, ~30 s into their life, on 2 cores. Whichever system was measured
// then took the stall: K=16 constant 20 ms at 50% load, a hub's 2nd run
// had p99 29.7-39.1 ms (1.36-1.79x the ideal) against 24-26.6 ms in its
// other runs, in 4 of 4 repetitions; with the reducer off, 24.6 ms and no
// mark-compact during the runs. Sixteen job processes on two cores is the
// benchmark's shape, not a deployment's.
const WORKER_V8_FLAGS = "--v8-flags=--no-memory-reducer";

/**
 * Starts the named systems with `workers` workers each. HAProxy and both
 * nginx configurations forward to one shared set of serial workers (only one
 * system carries load at a time); POTHEAD has its own workers.
 *
 * @param names which systems.
 * @param options worker count, service mode, config directory, time bound.
 * @returns the running systems.
 */
export async function startSystems(
  names: readonly SystemName[],
  options: StartOptions,
): Promise<Systems> {
  const children: Child[] = [];
  const stop = async () => {
    await Promise.all(children.map((c) => c.stop()));
  };
  try {
    const systems: System[] = [];
    let backends: { ports: number[]; workers: Child[] } | null = null;
    for (const name of names) {
      if (name === "pothead" || name === "pothead-hold") {
        const { url, hub, workers, metricsUrl } = await startPothead(
          children,
          name === "pothead" ? options : {
            ...options,
            hubArgs: [...options.hubArgs ?? [], "--hold-ahead"],
          },
        );
        systems.push({
          name,
          url,
          balancerPids: [hub.pid],
          workerPids: workers.map((w) => w.pid),
          metricsUrl,
        });
        continue;
      }
      backends ??= await startSerialWorkers(children, options);
      // "haproxy-b" is a second HAProxy with the same configuration: set
      // against the first, it shows how much two runs of one system differ.
      const { url, child } = name === "haproxy" || name === "haproxy-b"
        ? await startHaproxy(children, backends.ports, options)
        : await startNginx(
          children,
          backends.ports,
          name === "nginx-lc",
          options,
        );
      systems.push({
        name,
        url,
        balancerPids: [child.pid],
        workerPids: backends.workers.map((w) => w.pid),
      });
    }
    return { systems, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function startSerialWorkers(
  children: Child[],
  { workers, mode, maxSeconds }: StartOptions,
): Promise<{ ports: number[]; workers: Child[] }> {
  const started: Child[] = [];
  for (let i = 0; i < workers; i++) {
    const child = new Child(`serial worker ${i}`, DENO, [
      "run",
      LEGACY_ABORT_OFF,
      WORKER_V8_FLAGS,
      "--allow-net",
      "--allow-env",
      "bench/workers/serial_worker.ts",
      "--port",
      "0",
      "--id",
      `s${i}`,
      "--mode",
      mode,
    ], { maxSeconds });
    children.push(child);
    started.push(child);
  }
  const ports: number[] = [];
  for (const child of started) {
    const m = await child.waitFor(
      /Listening on http:\/\/[^:]+:(\d+)\//,
      STARTUP_MS,
    );
    ports.push(Number(m[1]));
  }
  return { ports, workers: started };
}

async function startPothead(
  children: Child[],
  {
    workers,
    mode,
    maxSeconds,
    hubArgs = [],
    handler = "bench/workers/pothead_job.ts",
    workerEnv = {},
  }: StartOptions,
): Promise<{ url: string; hub: Child; workers: Child[]; metricsUrl: string }> {
  const hub = new Child("POTHEAD hub", DENO, [
    "run",
    LEGACY_ABORT_OFF,
    "--allow-net",
    "--allow-env",
    "--allow-read",
    "hub.ts",
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--worker-port",
    "0",
    "--max-queue",
    "1000000",
    "--queue-timeout",
    "600s",
    "--log-level",
    "warn",
    // Read between runs (the held count), never while one is measured.
    "--admin-port",
    "0",
    ...hubArgs,
  ], { maxSeconds });
  children.push(hub);
  const consumer = await hub.waitFor(
    /Listening on http:\/\/[^ ]*:(\d+)\/ \(consumers\)/,
    STARTUP_MS,
  );
  const worker = await hub.waitFor(
    /Listening on tcp:\/\/[^ ]*:(\d+)\/ \(workers\)/,
    STARTUP_MS,
  );
  const admin = await hub.waitFor(
    /Listening on http:\/\/[^ ]*:(\d+)\/ \(admin\)/,
    STARTUP_MS,
  );
  const started: Child[] = [];
  for (let i = 0; i < workers; i++) {
    const child = new Child(`POTHEAD worker ${i}`, DENO, [
      "run",
      LEGACY_ABORT_OFF,
      WORKER_V8_FLAGS,
      "--allow-net",
      "--allow-env",
      "--allow-read",
      "worker.ts",
      "--connect",
      `127.0.0.1:${worker[1]}`,
      "--concurrency",
      "1",
      handler,
    ], {
      maxSeconds,
      env: { ...workerEnv, BENCH_WORKER_ID: `p${i}`, BENCH_SERVICE_MODE: mode },
    });
    children.push(child);
    started.push(child);
  }
  for (const child of started) {
    await child.waitFor(/^Connected to /, STARTUP_MS);
  }
  return {
    url: `http://127.0.0.1:${consumer[1]}/`,
    hub,
    workers: started,
    metricsUrl: `http://127.0.0.1:${admin[1]}/metrics`,
  };
}

/** The HAProxy configuration: one central queue, `maxconn 1` per server. */
export function haproxyConfig(port: number, backends: number[]): string {
  return [
    "global",
    "  maxconn 5000",
    "defaults",
    "  mode http",
    "  option http-keep-alive",
    "  timeout connect 5s",
    "  timeout client 600s",
    "  timeout server 600s",
    // Without it a queued request gives up after `timeout connect`.
    "  timeout queue 600s",
    "  timeout http-keep-alive 600s",
    "frontend bench",
    `  bind 127.0.0.1:${port}`,
    "  maxconn 5000",
    "  default_backend workers",
    "backend workers",
    "  balance roundrobin",
    "  http-reuse always",
    ...backends.map((p, i) => `  server s${i} 127.0.0.1:${p} maxconn 1`),
    "",
  ].join("\n");
}

async function startHaproxy(
  children: Child[],
  backends: number[],
  { dir, maxSeconds }: StartOptions,
): Promise<{ url: string; child: Child }> {
  const port = freePort();
  const config = join(dir, `haproxy-${port}.cfg`);
  await Deno.writeTextFile(config, haproxyConfig(port, backends));
  const child = new Child("haproxy", "haproxy", ["-db", "-f", config], {
    maxSeconds,
  });
  children.push(child);
  await waitForPort(port, STARTUP_MS, child);
  return { url: `http://127.0.0.1:${port}/`, child };
}

/** The nginx configuration: plain round-robin or `least_conn`, keep-alive upstream. */
export function nginxConfig(
  port: number,
  backends: number[],
  leastConn: boolean,
  dir: string,
): string {
  return [
    "daemon off;",
    "master_process off;",
    "worker_processes 1;",
    `pid ${join(dir, `nginx-${port}.pid`)};`,
    `error_log ${join(dir, `nginx-${port}.log`)} warn;`,
    "events { worker_connections 4096; }",
    "http {",
    "  access_log off;",
    `  client_body_temp_path ${join(dir, `nginx-${port}-body`)};`,
    `  proxy_temp_path ${join(dir, `nginx-${port}-proxy`)};`,
    `  fastcgi_temp_path ${join(dir, `nginx-${port}-fastcgi`)};`,
    `  uwsgi_temp_path ${join(dir, `nginx-${port}-uwsgi`)};`,
    `  scgi_temp_path ${join(dir, `nginx-${port}-scgi`)};`,
    "  keepalive_timeout 600s;",
    "  keepalive_requests 1000000;",
    "  upstream workers {",
    ...(leastConn ? ["    least_conn;"] : []),
    // max_fails=0: a slow worker is never taken out of rotation.
    ...backends.map((p) => `    server 127.0.0.1:${p} max_fails=0;`),
    "    keepalive 1024;",
    "    keepalive_requests 1000000;",
    "    keepalive_timeout 600s;",
    "  }",
    "  server {",
    `    listen 127.0.0.1:${port};`,
    "    location / {",
    "      proxy_pass http://workers;",
    "      proxy_http_version 1.1;",
    '      proxy_set_header Connection "";',
    "      proxy_read_timeout 600s;",
    "      proxy_send_timeout 600s;",
    "      proxy_next_upstream off;",
    "    }",
    "  }",
    "}",
    "",
  ].join("\n");
}

async function startNginx(
  children: Child[],
  backends: number[],
  leastConn: boolean,
  { dir, maxSeconds }: StartOptions,
): Promise<{ url: string; child: Child }> {
  const port = freePort();
  const config = join(dir, `nginx-${port}.conf`);
  await Deno.writeTextFile(config, nginxConfig(port, backends, leastConn, dir));
  const child = new Child(
    leastConn ? "nginx least_conn" : "nginx round-robin",
    "nginx",
    ["-p", dir, "-c", config, "-e", join(dir, `nginx-${port}.log`)],
    { maxSeconds },
  );
  children.push(child);
  await waitForPort(port, STARTUP_MS, child);
  return { url: `http://127.0.0.1:${port}/`, child };
}
