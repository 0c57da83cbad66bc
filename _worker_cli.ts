/**
 * The worker command line: flags and `POTHEAD_*` variables to
 * {@linkcode connectWorker} options, signal handling.
 *
 * @module
 */

import { parseArgs } from "node:util";
import { connectWorker, type FetchHandler, loadHandler } from "./worker.ts";
import { backendHandler } from "./_backend.ts";
import { capacityGate } from "./_capacity.ts";
import type { WorkerOptions } from "./worker.ts";
import { identityProblem } from "./_handshake.ts";
import {
  flagOrEnv,
  parseDuration,
  parseHostPort,
  parseInteger,
  readText,
  sourceOf,
  switchOn,
  UsageError,
  VERSION,
} from "./_cli.ts";

const HELP = `POTHEAD worker ${VERSION}: serve a fetch handler through a hub.

Usage: deno run -A worker.ts --connect HOST:PORT [options] HANDLER
       deno run -A worker.ts --connect HOST:PORT [options] http://127.0.0.1:8000

HANDLER is a module whose default export is a function (request, info) =>
Response or an object with a fetch method (a file that runs under
\`deno serve\` runs here unchanged). An http:// or https:// URL instead
forwards every request to that existing HTTP server (any language).

Options (each also as the environment variable in brackets):
  --connect HOST:PORT   a hub's worker port; repeat or comma-separate for several
                        hubs; names resolve to all A/AAAA records
                        [POTHEAD_CONNECT] (127.0.0.1:4040)
  --concurrency N       most requests at once [POTHEAD_CONCURRENCY] (1)
  --max-requests N      after N requests, drain and exit 0 (for handlers that
                        leak; a supervisor starts a fresh process)
                        [POTHEAD_MAX_REQUESTS] (0: never)
  --max-requests-jitter N  up to N more, drawn at start, so workers started
                        together do not exit together
                        [POTHEAD_MAX_REQUESTS_JITTER] (0)
  --max-rss MB          drain and exit 0 once the process's resident memory is
                        over MB when a request ends [POTHEAD_MAX_RSS] (0: never)
  --engine E            serve: Deno.serve on a private 127.0.0.1 listener, each
                        hub connection relayed to it (half the CPU per
                        request); inline: our HTTP/1.1 server on the hub
                        connection, no listener; auto: serve if it can listen
                        [POTHEAD_ENGINE] (auto)
  --max-backoff T       longest reconnect delay, at least 100ms
                        [POTHEAD_MAX_BACKOFF] (5s)
  --resolve-interval T  how often hub names are resolved again; 0 = once
                        [POTHEAD_RESOLVE_INTERVAL] (5s)
  --dns-server H:P      DNS server for hub names instead of the system's
  --tls                 connect with TLS [POTHEAD_TLS]
  --ca FILE             PEM CA certificate for the hub's certificate [POTHEAD_CA]
  --token-file FILE     bearer token for the hub's handshake, read again for
                        each connection [POTHEAD_TOKEN_FILE]
  --token TOKEN         the same, inline (visible in ps; prefer the file or
                        [POTHEAD_TOKEN])
  --worker-id ID        this worker's id at the hub [POTHEAD_WORKER_ID]
                        (HOSTNAME-PID)
  --pool NAME           the pool to serve [POTHEAD_POOL]
  --label K=V           a label for the hub (repeatable)
  --plain               no handshake: for hubs that only know the original
                        protocol (no token, id, pool or labels then)
  --adaptive            offer a slot beyond the first only while the machine has
                        room (idle CPU and free memory from /proc and cgroups;
                        needs -A to read them) [POTHEAD_ADAPTIVE]
  --min-idle-cpu N      idle CPUs needed to offer another slot (0.75)
  --min-free-memory MB  free memory needed to offer another slot (256)
  --settle T            wait after offering a slot before the next (2s)
  -h, --help            show this help
  -V, --version         show the version

Each connection opens with the PTTH handshake (carrying the id, pool, labels
and token). --plain connects as a plain worker (the original protocol).

SIGINT or SIGTERM drains: requests in progress finish, then exit 0.
A second signal exits at once.
`;

/**
 * The worker command line. Returns the exit code.
 *
 * @param args command-line arguments, without the program name.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        connect: { type: "string", multiple: true },
        concurrency: { type: "string" },
        "max-requests": { type: "string" },
        "max-requests-jitter": { type: "string" },
        "max-rss": { type: "string" },
        engine: { type: "string" },
        "max-backoff": { type: "string" },
        "resolve-interval": { type: "string" },
        "dns-server": { type: "string" },
        tls: { type: "boolean" },
        ca: { type: "string" },
        token: { type: "string" },
        "token-file": { type: "string" },
        "worker-id": { type: "string" },
        pool: { type: "string" },
        label: { type: "string", multiple: true },
        adaptive: { type: "boolean" },
        plain: { type: "boolean" },
        "min-idle-cpu": { type: "string" },
        "min-free-memory": { type: "string" },
        settle: { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (error) {
    console.error(`pothead-worker: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  const { values, positionals } = parsed;
  // Errors name the flag or the variable, whichever gave the value.
  const nameOf = (flag: keyof typeof values, env: string) =>
    sourceOf(values[flag], flag, env);
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(`pothead-worker ${VERSION}`);
    return 0;
  }
  let options: WorkerOptions;
  let concurrency: number;
  try {
    if (positionals.length !== 1) {
      throw new UsageError(
        `expected exactly one handler module, got ${positionals.length}`,
      );
    }
    const hubs = (values.connect ??
      [flagOrEnv(undefined, "POTHEAD_CONNECT") ?? "127.0.0.1:4040"])
      .flatMap((v) => v.split(","))
      .map((v) => v.trim())
      .filter((v) => v !== "")
      // Checked here, and an empty host (":4040") made 127.0.0.1.
      .map((v) => {
        const { hostname, port } = parseHostPort(
          v,
          nameOf("connect", "POTHEAD_CONNECT"),
        );
        return `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`;
      });
    concurrency = parseInteger(
      flagOrEnv(values.concurrency, "POTHEAD_CONCURRENCY"),
      nameOf("concurrency", "POTHEAD_CONCURRENCY"),
      1,
      1,
      10_000,
    );
    const engine = flagOrEnv(values.engine, "POTHEAD_ENGINE") ?? "auto";
    if (engine !== "auto" && engine !== "serve" && engine !== "inline") {
      throw new UsageError(
        `Invalid ${
          nameOf("engine", "POTHEAD_ENGINE")
        }: expected auto, serve or inline, got "${engine}"`,
      );
    }
    let tokenPath: string | undefined;
    const token = chooseToken(
      values["token-file"] as string | undefined,
      values.token as string | undefined,
      (name) => flagOrEnv(undefined, name),
      (path) => {
        // A token from a file is read again for each connection (see
        // tokenFromFile): whichever file chooseToken picked.
        tokenPath = path;
        return readText(path, "token file").trim();
      },
    );
    const caFile = flagOrEnv(values.ca, "POTHEAD_CA");
    const labels: Record<string, string> = {};
    for (const l of values.label ?? []) {
      const eq = l.indexOf("=");
      if (eq <= 0) {
        throw new UsageError(`Invalid --label: expected K=V, got "${l}"`);
      }
      labels[l.slice(0, eq)] = l.slice(eq + 1);
    }
    const dns = values["dns-server"];
    const ns = dns === undefined
      ? undefined
      : parseHostPort(dns, "--dns-server");
    const maxRequests = parseInteger(
      flagOrEnv(values["max-requests"], "POTHEAD_MAX_REQUESTS"),
      nameOf("max-requests", "POTHEAD_MAX_REQUESTS"),
      0,
    );
    const maxRequestsJitter = parseInteger(
      flagOrEnv(values["max-requests-jitter"], "POTHEAD_MAX_REQUESTS_JITTER"),
      nameOf("max-requests-jitter", "POTHEAD_MAX_REQUESTS_JITTER"),
      0,
    );
    const maxRssMiB = parseInteger(
      flagOrEnv(values["max-rss"], "POTHEAD_MAX_RSS"),
      nameOf("max-rss", "POTHEAD_MAX_RSS"),
      0,
      0,
      Math.floor(Number.MAX_SAFE_INTEGER / (1024 * 1024)),
    );
    if (maxRequestsJitter > 0 && maxRequests === 0) {
      throw new UsageError("--max-requests-jitter needs --max-requests");
    }
    options = {
      hubs,
      concurrency,
      maxRequests,
      maxRequestsJitter,
      maxRss: maxRssMiB * 1024 * 1024,
      onRecycle(reason) {
        console.error(
          reason.why === "requests"
            ? `pothead-worker: ${reason.requests} requests started (--max-requests): draining`
            : `pothead-worker: resident memory ${
              Math.round(reason.rss / 1024 / 1024)
            } MiB is over --max-rss ${maxRssMiB} after ${reason.requests} requests: draining`,
        );
      },
      engine,
      maxBackoff: Math.max(
        100,
        parseDuration(
          flagOrEnv(values["max-backoff"], "POTHEAD_MAX_BACKOFF"),
          nameOf("max-backoff", "POTHEAD_MAX_BACKOFF"),
          5000,
        ),
      ),
      resolveInterval: parseDuration(
        flagOrEnv(values["resolve-interval"], "POTHEAD_RESOLVE_INTERVAL"),
        nameOf("resolve-interval", "POTHEAD_RESOLVE_INTERVAL"),
        5000,
      ),
      nameServer: ns && { ipAddr: ns.hostname, port: ns.port },
      tls: switchOn(values.tls, "POTHEAD_TLS"),
      caCerts: caFile === undefined ? undefined : [readText(caFile, "CA file")],
      token: token === "" || token === undefined
        ? undefined
        : tokenPath === undefined
        ? token
        : tokenFromFile(
          tokenPath,
          token,
          (msg) => console.error(`pothead: ${msg}`),
        ),
      // An id by default, so the hub groups this process's slots (fewest
      // in progress first) and names it in logs and on the status page.
      workerId: flagOrEnv(values["worker-id"], "POTHEAD_WORKER_ID") ??
        defaultWorkerId(),
      pool: flagOrEnv(values.pool, "POTHEAD_POOL"),
      labels: Object.keys(labels).length > 0 ? labels : undefined,
    };
    // Refused here rather than by every hub, handshake after handshake.
    const problem = identityProblem({
      ...options,
      token: token === "" ? undefined : token,
    });
    if (problem !== null) {
      throw new UsageError(`Cannot connect as a worker: ${problem}`);
    }
    if (values.plain) {
      if (
        options.token || values["worker-id"] || options.pool || options.labels
      ) {
        throw new UsageError(
          "--plain cannot be used with --token, --worker-id, --pool or --label",
        );
      }
      options.workerId = undefined;
    }
    const adaptive = switchOn(values.adaptive, "POTHEAD_ADAPTIVE");
    if (!adaptive) {
      // Ignored without --adaptive: the operator most likely forgot it.
      for (const flag of ["min-idle-cpu", "min-free-memory", "settle"]) {
        if (values[flag as keyof typeof values] !== undefined) {
          throw new UsageError(`--${flag} needs --adaptive`);
        }
      }
    }
    if (adaptive) {
      const cpu = values["min-idle-cpu"];
      // Decimal only: Number() would also take "Infinity" (never a second
      // slot) or "0x10".
      if (cpu !== undefined && !/^\s*[0-9]+(\.[0-9]+)?\s*$/.test(cpu)) {
        throw new UsageError(
          `Invalid --min-idle-cpu: expected a number of CPUs like 0.75, got "${cpu}"`,
        );
      }
      options.gate = capacityGate({
        minIdleCpu: cpu === undefined ? undefined : Number(cpu),
        minFreeMemory: values["min-free-memory"] === undefined
          ? undefined
          : parseInteger(values["min-free-memory"], "--min-free-memory", 0) *
            1024 * 1024,
        settle: parseDuration(values.settle, "--settle", 2000),
      });
    }
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`pothead-worker: ${error.message}\n\n${HELP}`);
    return 2;
  }
  let handler: FetchHandler;
  try {
    handler = /^https?:\/\//i.test(positionals[0])
      ? backendHandler(positionals[0])
      : await loadHandler(positionals[0]);
  } catch (error) {
    console.error(`pothead-worker: ${(error as Error).message}`);
    return 1;
  }
  const notices = connectionNotices(concurrency);
  let worker;
  try {
    worker = connectWorker(handler, {
      ...options,
      onConnect: notices.onConnect,
      onError(error, context) {
        if (notices.onConnectError(error, context)) return;
        const text = (error as Error)?.message ?? String(error);
        // A handler's error is the user's bug: its stack says where.
        const stack = context === "handler" && error instanceof Error &&
            error.stack !== undefined
          ? error.stack.split("\n").slice(1).join("\n")
          : "";
        console.error(
          `pothead-worker: ${context}: ${text}${stack ? "\n" + stack : ""}`,
        );
      },
    });
  } catch (error) {
    console.error(`pothead-worker: ${(error as Error).message}`);
    return 2;
  }
  let signals = 0;
  const onSignal = () => {
    if (++signals > 1) Deno.exit(1);
    console.error(
      "pothead-worker: draining (send the signal again to exit now)",
    );
    worker.drain();
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await worker.finished;
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  return 0;
}

// Hub addresses the notices below remember: a hub name whose addresses
// change (hub pods replaced) must not pile them up over weeks. One
// forgotten is at worst announced again as newly connected.
const NOTICES_KEPT = 1024;

/** What {@linkcode connectionNotices} gives. */
export interface ConnectionNotices {
  /** For `onConnect`: prints `Connected to HUB` once, or `… again` after a failure. */
  onConnect(hub: string): void;
  /**
   * For `onError`: prints a connect failure once per distinct failure of a
   * hub (not once per retry); true if `context` was a connect failure.
   */
  onConnectError(error: unknown, context: string): boolean;
  /** Hub addresses remembered (announced or failing). */
  readonly remembered: number;
}

/**
 * The worker CLI's lines about connecting to hubs, remembering at most
 * NOTICES_KEPT addresses (the least recently heard of forgotten first).
 */
export function connectionNotices(
  concurrency: number,
  print: { log(line: string): void; error(line: string): void } = console,
): ConnectionNotices {
  const announced = new Set<string>();
  // Per hub, the connect failure last printed: once it connects again, a
  // line says so, or the log would end with "cannot connect" for good.
  const failing = new Map<string, string>();
  const bound = (kept: Set<string> | Map<string, string>) => {
    if (kept.size > NOTICES_KEPT) kept.delete(kept.keys().next().value!);
  };
  return {
    onConnect(hub) {
      const failed = failing.delete(hub);
      if (!announced.delete(hub)) {
        print.log(`Connected to ${hub} (concurrency ${concurrency})`);
      } else if (failed) print.log(`Connected to ${hub} again`);
      announced.add(hub);
      bound(announced);
    },
    onConnectError(error, context) {
      if (!context.startsWith("connect ")) return false;
      const text = (error as Error)?.message ?? String(error);
      const hub = context.slice("connect ".length);
      // One line per distinct failure, not one per retry.
      const last = failing.get(hub);
      if (text !== last) {
        print.error(
          `pothead-worker: cannot connect to ${hub}: ${text} (retrying)`,
        );
      }
      failing.delete(hub);
      failing.set(hub, text);
      bound(failing);
      return true;
    },
    get remembered() {
      return announced.size + failing.size;
    },
  };
}

/**
 * A token read from `path` again at each call, so that a worker uses a
 * rotated secret from its next connection on. A read that fails, or finds
 * no valid token (a secret caught in mid-update), gives the last good one
 * (`first` at the start) and is reported through `warn` once until it
 * changes.
 */
export function tokenFromFile(
  path: string,
  first: string,
  warn: (message: string) => void,
): () => string {
  let last = first;
  let failed = "";
  return () => {
    let problem: string;
    try {
      const token = Deno.readTextFileSync(path).trim();
      const invalid = identityProblem({ token });
      if (invalid === null) {
        last = token;
        failed = "";
        return token;
      }
      problem = invalid;
    } catch (error) {
      problem = (error as Error).message;
    }
    if (problem !== failed) {
      warn(
        `cannot read a new token from "${path}" (${problem}): using the one read before`,
      );
    }
    failed = problem;
    return last;
  };
}

/**
 * The handshake token: `--token-file`, else `--token`, else the file in
 * `POTHEAD_TOKEN_FILE`, else `POTHEAD_TOKEN` (a flag wins over any variable).
 */
export function chooseToken(
  fileFlag: string | undefined,
  tokenFlag: string | undefined,
  env: (name: string) => string | undefined,
  read: (path: string) => string,
): string | undefined {
  if (fileFlag !== undefined) return read(fileFlag);
  if (tokenFlag !== undefined) return tokenFlag;
  const envFile = env("POTHEAD_TOKEN_FILE");
  return envFile !== undefined ? read(envFile) : env("POTHEAD_TOKEN");
}

/**
 * The worker id when none is given: `HOST-PID`. Without `--allow-sys` the
 * host comes from `$HOSTNAME` (a Kubernetes pod's name); failing that, from
 * a random tag, since in a container every worker may be pid 1 and workers
 * with one id are one worker to the hub.
 */
export function defaultWorkerId(
  hostname: () => string = Deno.hostname,
  env: (name: string) => string | undefined = (n) => Deno.env.get(n),
  pid: number = Deno.pid,
): string {
  let host: string | undefined;
  try {
    host = hostname();
  } catch {
    try {
      host = env("HOSTNAME");
    } catch {
      // no --allow-env either
    }
  }
  if (!host) host = `worker-${crypto.randomUUID().slice(0, 8)}`;
  return `${host.replace(/[^A-Za-z0-9._:-]/g, "-")}-${pid}`.slice(0, 128);
}
