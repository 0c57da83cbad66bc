/**
 * Test helpers for real Deno subprocesses: spawn the hub and worker CLIs,
 * read their output line by line until a pattern shows up, and always clean
 * up (kill, await the exit status, finish reading the pipes) so Deno's test
 * sanitizers stay quiet.
 *
 * @module
 */

import { fileURLToPath } from "node:url";
import { deadline } from "./_wait.ts";

/** The project directory (where deno.json is). */
export const ROOT: string = fileURLToPath(new URL("../", import.meta.url));

/** The permissions `deno task start` / `deno task worker` grant. */
export const RUN_PERMISSIONS: readonly string[] = [
  "--allow-net",
  "--allow-env",
  "--allow-read",
];

/** Default hang guard for waiting on a line, in milliseconds. */
export const LINE_TIMEOUT = 30_000;

/** The lines one output stream (stdout or stderr) has printed so far. */
export class Lines {
  /** Every complete line received, without line terminators. */
  readonly lines: string[] = [];
  #cursor = 0;
  #ended = false;
  #waiters = new Set<() => void>();
  #describe: () => string;

  constructor(describe: () => string) {
    this.#describe = describe;
  }

  /** True once the stream has reached its end. */
  get ended(): boolean {
    return this.#ended;
  }

  /** All lines so far, joined. */
  text(): string {
    return this.lines.join("\n");
  }

  /** Feeds one complete line (used by the pump). */
  push(line: string): void {
    this.lines.push(line);
    for (const waiter of [...this.#waiters]) waiter();
  }

  /** Marks the end of the stream (used by the pump). */
  end(): void {
    this.#ended = true;
    for (const waiter of [...this.#waiters]) waiter();
  }

  /**
   * Resolves with the match of the next line (after those matched by earlier
   * calls) that matches `pattern`. Rejects, naming what was printed, if the
   * stream ends first or after `timeout` milliseconds (a hang guard).
   */
  next(
    pattern: RegExp,
    timeout: number = LINE_TIMEOUT,
  ): Promise<RegExpMatchArray> {
    return new Promise((resolve, reject) => {
      const check = () => {
        while (this.#cursor < this.lines.length) {
          const m = pattern.exec(this.lines[this.#cursor++]);
          if (m !== null) {
            done();
            resolve(m);
            return;
          }
        }
        if (this.#ended) {
          done();
          reject(
            new Error(
              `Cannot find a line matching ${pattern}: the output ended\n${this.#describe()}`,
            ),
          );
        }
      };
      const done = () => {
        clearTimeout(timer);
        this.#waiters.delete(check);
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `Cannot find a line matching ${pattern}: none after ${timeout} ms\n${this.#describe()}`,
          ),
        );
      }, timeout);
      this.#waiters.add(check);
      check();
    });
  }
}

/** Options for {@linkcode spawnDeno}. */
export interface SpawnOptions {
  /** Extra environment variables (added to the inherited ones). */
  env?: Record<string, string>;
  /**
   * Working directory.
   * @default {ROOT}
   */
  cwd?: string;
  /**
   * Cgroup directories to start in (Linux, as root): a shell writes its own
   * pid into each one's `cgroup.procs` and then becomes Deno, so the process
   * is in them from its first instruction.
   */
  cgroups?: string[];
}

/** Runs `command args` after joining `cgroups` (see SpawnOptions). */
function inCgroups(
  cgroups: string[],
  command: string,
  args: string[],
): [string, string[]] {
  const join = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || ' +
    'exit 97; shift; done; shift; exec "$@"';
  return ["/bin/sh", ["-c", join, "sh", ...cgroups, "--", command, ...args]];
}

async function pump(stream: ReadableStream<Uint8Array>, lines: Lines) {
  let rest = "";
  try {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + text).split("\n");
      rest = parts.pop()!;
      for (const line of parts) lines.push(line.replace(/\r$/, ""));
    }
  } finally {
    if (rest !== "") lines.push(rest);
    lines.end();
  }
}

/** A running Deno subprocess with its output read line by line. */
export class Proc {
  /** The child process. */
  readonly child: Deno.ChildProcess;
  /** Its standard output, line by line. */
  readonly stdout: Lines;
  /** Its standard error, line by line. */
  readonly stderr: Lines;
  /** The exit status, once the process has exited and its pipes are read. */
  readonly status: Promise<Deno.CommandStatus>;
  /** A short name for messages. */
  readonly name: string;
  #exited = false;

  constructor(name: string, args: string[], options: SpawnOptions = {}) {
    this.name = name;
    const [command, argv] = options.cgroups === undefined
      ? [Deno.execPath(), args]
      : inCgroups(options.cgroups, Deno.execPath(), args);
    this.child = new Deno.Command(command, {
      args: argv,
      cwd: options.cwd ?? ROOT,
      env: { NO_COLOR: "1", ...options.env },
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.stdout = new Lines(() => this.describe());
    this.stderr = new Lines(() => this.describe());
    const pumps = Promise.all([
      pump(this.child.stdout, this.stdout),
      pump(this.child.stderr, this.stderr),
    ]);
    this.status = this.child.status.then(async (status) => {
      this.#exited = true;
      await pumps;
      return status;
    });
  }

  /** The process id. */
  get pid(): number {
    return this.child.pid;
  }

  /** What the process printed, for failure messages. */
  describe(): string {
    return `--- ${this.name} stdout:\n${this.stdout.text()}\n--- ${this.name} stderr:\n${this.stderr.text()}\n---`;
  }

  /** Sends a signal unless the process has exited. */
  kill(signal: Deno.Signal = "SIGTERM"): void {
    if (this.#exited) return;
    try {
      this.child.kill(signal);
    } catch {
      // it exited in the meantime
    }
  }

  /** Kills the process if it still runs and waits for it; never throws. */
  async close(): Promise<Deno.CommandStatus> {
    this.kill("SIGKILL");
    return await this.status;
  }
}

/** Spawns `deno <args>` in the project directory with piped output. */
export function spawnDeno(
  name: string,
  args: string[],
  options?: SpawnOptions,
): Proc {
  return new Proc(name, args, options);
}

/**
 * Runs `deno <args>` to completion and returns its code and output. With
 * `timeout` (ms), a process still running then is killed and the call
 * rejects (for a command that should exit at once, such as a usage error).
 */
export async function runDeno(
  args: string[],
  options: SpawnOptions & { timeout?: number } = {},
): Promise<{ code: number; stdout: string; stderr: string }> {
  const [command, argv] = options.cgroups === undefined
    ? [Deno.execPath(), args]
    : inCgroups(options.cgroups, Deno.execPath(), args);
  const signal = options.timeout === undefined
    ? undefined
    : AbortSignal.timeout(options.timeout);
  const out = await new Deno.Command(command, {
    args: argv,
    cwd: options.cwd ?? ROOT,
    env: { NO_COLOR: "1", ...options.env },
    stdin: "null",
    signal,
  }).output();
  const decoder = new TextDecoder();
  // Killed (SIGTERM, which a hub takes as a shutdown) for running too long.
  if (signal?.aborted) {
    throw new Error(
      `deno ${args.join(" ")} still ran after ${options.timeout} ms: ${
        decoder.decode(out.stderr)
      }`,
    );
  }
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
}

/** What {@linkcode runTool} gives back. */
export interface ToolResult {
  code: number;
  stdout: Uint8Array;
  stderr: string;
}

/**
 * Runs a program (curl, nghttp, ...) to completion, writing `stdin` to it
 * when given; rejects if it takes longer than `ms`.
 */
export async function runTool(
  tool: string,
  args: string[],
  stdin?: Uint8Array,
  ms = LINE_TIMEOUT,
): Promise<ToolResult> {
  const child = new Deno.Command(tool, {
    args,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(stdin);
    await w.close();
  }
  const output = child.output();
  let out: Deno.CommandOutput;
  try {
    out = await deadline(output, ms, `${tool} ${args.join(" ")}`);
  } catch (error) {
    // Not left running past its test.
    child.kill();
    await output.catch(() => {});
    throw error;
  }
  return {
    code: out.code,
    stdout: out.stdout,
    stderr: new TextDecoder().decode(out.stderr),
  };
}

/** Kills every process that is still running and waits for all of them. */
export async function closeAll(
  ...procs: (Proc | undefined)[]
): Promise<void> {
  await Promise.all(procs.map((p) => p?.close()));
}

/**
 * A TCP port that was free a moment ago (bound on port 0, then closed). Only
 * for tests that need to know a port before its listener exists.
 */
export function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr as Deno.NetAddr;
  listener.close();
  return port;
}

/** A hub CLI process and the ports it listens on. */
export interface HubProc {
  proc: Proc;
  /** Consumer (HTTP) port. */
  port: number;
  /** Worker port. */
  workerPort: number;
}

const CONSUMERS_LINE = /^Listening on [a-z]+:\/\/\S+:([0-9]+)\/ \(consumers\)$/;
const WORKERS_LINE = /^Listening on [a-z]+:\/\/\S+:([0-9]+)\/ \(workers\b/;

/**
 * Reads a hub's two "Listening on" lines (on stderr with an access log)
 * and returns its ports. Kills the process if the lines do not come.
 */
export async function hubPorts(
  proc: Proc,
  from: "stdout" | "stderr" = "stdout",
): Promise<HubProc> {
  try {
    // Both waits start at once: the two lines may arrive in one read.
    const [consumers, workers] = await Promise.all([
      proc[from].next(CONSUMERS_LINE),
      proc[from].next(WORKERS_LINE),
    ]);
    return { proc, port: Number(consumers[1]), workerPort: Number(workers[1]) };
  } catch (error) {
    await proc.close();
    throw error;
  }
}

/**
 * Starts the hub CLI (`hub.ts`, or another entry point such as `mod.ts`) on
 * 127.0.0.1 with both ports 0 unless `args` say otherwise, and waits until it
 * listens.
 */
export function startHub(
  args: string[] = [],
  options: SpawnOptions & {
    entry?: string;
    /** Where the "Listening on" lines come (stderr with an access log). */
    listening?: "stdout" | "stderr";
    /** Flags for `deno run` itself (`--unstable-net`). */
    denoFlags?: string[];
  } = {},
): Promise<HubProc> {
  const proc = spawnDeno(options.entry ?? "hub", [
    "run",
    ...options.denoFlags ?? [],
    ...RUN_PERMISSIONS,
    options.entry ?? "hub.ts",
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--worker-port",
    "0",
    ...args,
  ], options);
  return hubPorts(proc, options.listening);
}

/**
 * Starts the worker CLI with `handler` (a path relative to the project)
 * connecting to 127.0.0.1:`workerPort`, and waits for its "Connected" line
 * unless `wait` is false.
 */
export async function startWorker(
  workerPort: number,
  handler: string,
  args: string[] = [],
  wait = true,
): Promise<Proc> {
  const proc = spawnDeno("worker", [
    "run",
    ...RUN_PERMISSIONS,
    "worker.ts",
    "--connect",
    `127.0.0.1:${workerPort}`,
    ...args,
    handler,
  ]);
  if (wait) {
    try {
      await proc.stdout.next(/^Connected to /);
    } catch (error) {
      await proc.close();
      throw error;
    }
  }
  return proc;
}
