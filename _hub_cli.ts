/**
 * The hub command line: flags and `POTHEAD_*` variables to
 * {@linkcode serveHub} options, logging to stderr, signal handling.
 *
 * @module
 */

import { parseArgs } from "node:util";
import type { HubLogRecord, HubServer, Route, ServeHubOptions } from "./hub.ts";
import { serveHub } from "./hub.ts";
import { parseAddressRange } from "./_address.ts";
import { hasUnstableNet } from "./_io.ts";
import { formatAccess, HubMetrics } from "./_metrics.ts";
import { createAdminHandler } from "./_admin.ts";
import {
  flagOrEnv,
  formatAddr,
  parseDuration,
  parseInteger,
  readText,
  sourceOf,
  switchOn,
  UsageError,
  VERSION,
} from "./_cli.ts";

const HELP =
  `POTHEAD hub ${VERSION}: a queue of HTTP requests for workers that dial in.

Usage: deno run -A --unstable-no-legacy-abort jsr:@pothead/hub [options]
(the flag spares a DOMException per request and a warning; it runs without it)

Options (each also as the environment variable in brackets):
  --hostname ADDR          address to bind both listeners [POTHEAD_HOSTNAME] (0.0.0.0)
  --port N                 consumer HTTP port [POTHEAD_PORT] (8080)
  --worker-port N          worker port [POTHEAD_WORKER_PORT] (4040)
  --max-queue N            most queued requests per pool; more get 503
                           [POTHEAD_MAX_QUEUE] (10000)
  --queue-timeout T        longest wait in the queue, then 503; 0 = forever
                           [POTHEAD_QUEUE_TIMEOUT] (30s)
  --fair-by KEY            fair queuing: serve consumers in turn, by KEY = ip
                           (the consumer's address; behind a proxy only with
                           --trusted-proxies or --trust-forwarded) or
                           header:NAME (a field a trusted
                           gateway sets) [POTHEAD_FAIR_BY] (off: first come,
                           first served)
  --fair-share S           with --fair-by, what consumers get equal shares of:
                           requests (a turn each) or time (of the workers: one
                           whose jobs run longer gets fewer turns)
                           [POTHEAD_FAIR_SHARE] (requests)
  --fair-weight KEY=W      with --fair-by, key KEY gets W times the share of
                           others (repeatable; W a number above 0)
                           [POTHEAD_FAIR_WEIGHTS, KEY=W,KEY=W] (all 1)
  --max-queue-per-key N    with --fair-by, most queued requests of one key;
                           more get 429 [POTHEAD_MAX_QUEUE_PER_KEY] (no limit)
  --affinity-by KEY        soft worker affinity: a request that finds idle
                           workers goes to the one its KEY (ip or header:NAME,
                           as --fair-by) ranks highest, by rendezvous hashing
                           [POTHEAD_AFFINITY_BY] (off: the least loaded)
  --affinity-wait T        with --affinity-by, how long a request may wait for
                           its key's first worker when that one is busy and
                           others idle, before it goes elsewhere; and, while
                           requests queue, how long a freed slot may pass the
                           head over for a request of its own keys; about what
                           a cold start costs [POTHEAD_AFFINITY_WAIT] (0: never)
  --hold-ahead             while every worker connection of a pool is busy and
                           requests queue, write a queued bodiless GET, HEAD or
                           OPTIONS behind a request in progress, so its worker
                           starts it without a round trip (workers of the serve
                           engine); not with --fair-by or --affinity-by
                           [POTHEAD_HOLD_AHEAD] (off)
  --head-timeout T         time a worker has to send its response head, then 504;
                           0 = forever [POTHEAD_HEAD_TIMEOUT] (300s)
  --body-idle-timeout T    longest pause in a worker's response body, or in its
                           consumer's taking of it, then the body is cut;
                           0 = forever [POTHEAD_BODY_IDLE_TIMEOUT] (120s)
  --upload-idle-timeout T  longest pause in a consumer's request body, then 408;
                           0 = forever [POTHEAD_UPLOAD_IDLE_TIMEOUT] (60s)
  --max-head-size N        largest response head from a worker, bytes, at
                           least 256 [POTHEAD_MAX_HEAD_SIZE] (65536)
  --max-response-body N    largest response body from a worker, bytes; 0 = no
                           limit [POTHEAD_MAX_RESPONSE_BODY] (0)
  --max-request-body N     largest request body from a consumer, bytes, else 413;
                           0 = no limit [POTHEAD_MAX_REQUEST_BODY] (0)
  --response-buffer N      bytes of a response read ahead of a slow consumer, so
                           the worker is free sooner; 0 = at the consumer's pace
                           [POTHEAD_RESPONSE_BUFFER] (1048576)
  --response-buffer-total N
                           most bytes held that way over all responses
                           [POTHEAD_RESPONSE_BUFFER_TOTAL] (67108864)
  --response-spill-dir DIR a directory where responses go on past that, so a
                           worker is free once it has sent its response, however
                           large (needs write access) [POTHEAD_RESPONSE_SPILL_DIR]
  --response-spill-max N   most bytes of one response waiting there
                           [POTHEAD_RESPONSE_SPILL_MAX] (1073741824)
  --response-spill-total N most bytes of all responses waiting there
                           [POTHEAD_RESPONSE_SPILL_TOTAL] (17179869184)
  --request-buffer N       bytes of an upload read ahead while its request waits
                           in the queue; 0 = read when a worker asks
                           [POTHEAD_REQUEST_BUFFER] (1048576)
  --request-buffer-total N
                           most bytes held that way over all uploads
                           [POTHEAD_REQUEST_BUFFER_TOTAL] (67108864)
  --request-spill-dir DIR  a directory where queued uploads go on past that
                           (needs write access) [POTHEAD_REQUEST_SPILL_DIR]
  --request-spill-max N    most bytes of one upload waiting there
                           [POTHEAD_REQUEST_SPILL_MAX] (1073741824)
  --request-spill-total N  most bytes of all uploads waiting there
                           [POTHEAD_REQUEST_SPILL_TOTAL] (17179869184)
  --buffer-uploads         read uploads that far before they queue, so no worker
                           waits for a slow uploader [POTHEAD_BUFFER_UPLOADS]
  --no-websockets          drop Upgrade: workers see WebSocket handshakes as plain
                           GETs [POTHEAD_NO_WEBSOCKETS]
  --max-websocket-message N
                           largest WebSocket message from a worker
                           [POTHEAD_MAX_WEBSOCKET_MESSAGE] (16777216)
  --max-retries N          resends of a request a worker provably did not start
                           [POTHEAD_MAX_RETRIES] (2)
  --shutdown-grace T       on SIGINT/SIGTERM, time queued and running requests and open
                           WebSockets get [POTHEAD_SHUTDOWN_GRACE] (30s)
  --reuse-port             listen with SO_REUSEPORT, so that a new hub can start
                           on the same ports and this one hands over to it on
                           SIGTERM (needs deno run --unstable-net)
                           [POTHEAD_REUSE_PORT]
  --trust-forwarded        keep client X-Forwarded-* fields from every peer
                           [POTHEAD_TRUST_FORWARDED]
  --trusted-proxies LIST   the proxies in front (CIDRs or addresses, comma-
                           separated) whose X-Forwarded-* are kept; the consumer
                           is the last X-Forwarded-For (or, below, Forwarded)
                           address not among them [POTHEAD_TRUSTED_PROXIES]
  --forwarded-field NAME   where trusted proxies name the consumer:
                           x-forwarded-for, or forwarded (RFC 7239's
                           Forwarded for=, which the hub then appends to as
                           well; only if every trusted proxy appends to it)
                           [POTHEAD_FORWARDED_FIELD] (x-forwarded-for)
  --trust-priority         take a request's priority class from its
                           X-Pothead-Priority field [POTHEAD_TRUST_PRIORITY]
  --priority-step T        the wait one priority class is worth: a request goes
                           as if it came class x T earlier, so no class starves
                           [POTHEAD_PRIORITY_STEP] (off: classes are strict)
  --cert FILE --key FILE   TLS for consumers [POTHEAD_CERT, POTHEAD_KEY]
  --worker-cert FILE --worker-key FILE
                           TLS for workers [POTHEAD_WORKER_CERT, POTHEAD_WORKER_KEY]
  --worker-token-file FILE valid worker tokens, one per line; workers must then
                           pass the PTTH handshake; read again when it changes
                           (checked every 5 s) and on SIGHUP
                           [POTHEAD_WORKER_TOKEN_FILE]
  --worker-token TOKEN     a valid worker token (repeatable; visible in ps: prefer
                           the file or [POTHEAD_WORKER_TOKENS], comma-separated)
  --handshake-wait T       without tokens, how long a new worker connection may
                           take to start a handshake [POTHEAD_HANDSHAKE_WAIT] (50ms)
  --ping-interval T        ping worker connections idle this long (workers that
                           answer pings); 0 = never [POTHEAD_PING_INTERVAL] (30s)
  --ping-timeout T         time a worker has to answer, then its connection is
                           closed; above 0 [POTHEAD_PING_TIMEOUT] (10s)
  --route RULE             route to a pool (repeatable): /prefix=POOL,
                           host=POOL or host/prefix=POOL, each with an optional
                           @PRIORITY (-1000..1000); others go to "default"
  --config FILE            JSON: { "routes": [{ "pool", "pathPrefix", "host",
                           "priority" }],
                           "pools": { NAME: { "maxQueue", "queueTimeout",
                           "priorityStep", "fairBy", "fairShare",
                           "fairWeights", "maxQueuePerKey", "affinityBy",
                           "affinityWait", "holdAhead", "headTimeout",
                           "bodyIdleTimeout", "uploadIdleTimeout",
                           "maxRequestBodySize", "maxResponseBodySize" } } }
                           (queueTimeout, priorityStep, affinityWait and the
                           timeouts: ms,
                           or a duration like "30s"; the sizes: bytes, 0 = no
                           limit; each in place of its flag for that pool;
                           fairBy, affinityBy: "ip", "header:NAME", or null
                           for off;
                           fairShare: "requests" or "time";
                           fairWeights: { KEY: W })
  --admin-port N           admin listener: /metrics, /healthz, /readyz, /status,
                           /events and a live status page at /; off unless
                           given [POTHEAD_ADMIN_PORT]
  --admin-hostname ADDR    its address [POTHEAD_ADMIN_HOSTNAME] (127.0.0.1)
  --ready-min-slots N      /readyz is 200 with at least N worker slots
                           [POTHEAD_READY_MIN_SLOTS] (1)
  --access-log FORMAT      text, json or off: one line per request on stdout
                           [POTHEAD_ACCESS_LOG] (off)
  --log-level L            debug, info, warn or error [POTHEAD_LOG_LEVEL] (info)
  -h, --help               show this help
  -V, --version            show the version

Durations: 500ms, 30s, 2m, 1h, or a bare number of seconds. Switches from the
environment: 1, true or yes (on); 0, false, no or empty (off).
`;

const LEVELS = ["debug", "info", "warn", "error"];

// --fair-by: ip, or header: and a field name (RFC 9110 token).
const FAIR_BY = /^(ip|header:[!#$%&'*+.^_`|~0-9A-Za-z-]+)$/;

/**
 * Parses a `--route` rule: `/prefix=pool`, `host=pool` or
 * `host/prefix=pool`, each with an optional `@priority` (an integer; pool
 * names cannot hold `@`).
 */
export function parseRoute(rule: string): Route {
  const eq = rule.lastIndexOf("=");
  let pool = rule.slice(eq + 1).trim();
  const match = rule.slice(0, eq).trim();
  const invalid = () =>
    new UsageError(
      `Invalid --route: expected /prefix=POOL, host=POOL or host/prefix=POOL, each with an optional @PRIORITY, got "${rule}"`,
    );
  if (eq <= 0 || pool === "" || match === "") throw invalid();
  let priority: number | undefined;
  const at = pool.lastIndexOf("@");
  if (at >= 0) {
    const text = pool.slice(at + 1).trim();
    if (!/^[+-]?[0-9]+$/.test(text)) throw invalid();
    priority = Number(text);
    pool = pool.slice(0, at).trim();
  }
  const slash = match.indexOf("/");
  const route: Route = slash === 0
    ? { pool, pathPrefix: match }
    : slash < 0
    ? { pool, host: match }
    : { pool, host: match.slice(0, slash), pathPrefix: match.slice(slash) };
  if (priority !== undefined) route.priority = priority;
  return route;
}

/**
 * Parses `--fair-weight` rules, `KEY=W` (the last `=` ends the key, which
 * may hold one), into weights by key; a later rule for a key wins.
 */
export function parseWeights(
  rules: string[],
  name = "--fair-weight",
): Record<string, number> {
  const weights: Record<string, number> = {};
  for (const rule of rules) {
    const eq = rule.lastIndexOf("=");
    const text = rule.slice(eq + 1).trim();
    const weight = Number(text);
    if (eq < 0 || text === "" || !(weight > 0) || !Number.isFinite(weight)) {
      throw new UsageError(
        `Invalid ${name}: expected KEY=W with W a number above 0, got "${rule}"`,
      );
    }
    Object.defineProperty(weights, rule.slice(0, eq), {
      value: weight,
      enumerable: true,
      writable: true,
      configurable: true,
    });
  }
  return weights;
}

/**
 * The worker tokens from `--worker-token`, `--worker-token-file` and
 * `POTHEAD_WORKER_TOKENS`; the file is read at each call (see
 * {@linkcode watchTokens}).
 *
 * @throws {UsageError} when a source holds no token or an invalid one.
 */
export function workerTokensFrom(
  values: Record<string, string | string[] | boolean | undefined>,
): string[] {
  // Errors name the source of the bad token.
  const checked = (found: string[], source: string) => {
    for (const t of found) {
      if (!/^[\x21-\x7e]{8,}$/.test(t)) {
        throw new UsageError(
          `Invalid worker token in ${source}: use 8 or more visible ASCII characters`,
        );
      }
    }
    return found;
  };
  const tokens: string[] = checked(
    [...(values["worker-token"] as string[] ?? [])],
    "--worker-token",
  );
  const path = flagOrEnv(
    values["worker-token-file"] as string | undefined,
    "POTHEAD_WORKER_TOKEN_FILE",
  );
  const tokenFile = path === undefined
    ? undefined
    : readText(path, "worker token file");
  // A token file or variable that holds no token (a secret that was not
  // mounted) must not leave the worker port open to anyone.
  const none = (what: string) =>
    new UsageError(`Invalid ${what}: it holds no token`);
  if (tokenFile !== undefined) {
    const found = tokenFile.split("\n").map((t) => t.trim()).filter((t) =>
      t !== "" && !t.startsWith("#")
    );
    if (found.length === 0) throw none("--worker-token-file");
    tokens.push(...checked(found, "--worker-token-file"));
  }
  // A --worker-token flag wins over the variable (rotating a token with
  // flags must not leave the old one valid).
  const envTokens = values["worker-token"] === undefined
    ? flagOrEnv(undefined, "POTHEAD_WORKER_TOKENS")
    : undefined;
  if (envTokens !== undefined) {
    const found = envTokens.split(/[\s,]+/).filter((t) => t !== "");
    if (found.length === 0) throw none("POTHEAD_WORKER_TOKENS");
    tokens.push(...checked(found, "POTHEAD_WORKER_TOKENS"));
  }
  return tokens;
}

// How often the hub looks at its worker token file for changes.
const TOKEN_FILE_CHECK = 5_000;

/** Options for {@linkcode watchTokens}. */
export interface WatchTokensOptions {
  /** The tokens in force now. */
  current: readonly string[];
  /** Milliseconds between reads. */
  every: number;
  /** Stops watching. */
  signal: AbortSignal;
}

/**
 * Reads the worker tokens again every `every` ms and on SIGHUP, and applies
 * them when they changed, so a rotated secret takes effect without a
 * restart. A read that fails, or finds no valid token, keeps the tokens in
 * force (a secret caught in mid-update, or unmounted, must not shut every
 * worker out); it is logged once until the next change.
 */
export function watchTokens(
  read: () => string[],
  apply: (tokens: string[]) => void,
  log: (record: HubLogRecord) => void,
  options: WatchTokensOptions,
): void {
  let current = options.current.join("\n");
  let failed = "";
  const check = () => {
    let tokens;
    try {
      tokens = read();
    } catch (error) {
      const reason = (error as Error).message;
      if (reason !== failed) {
        log({
          level: "warn",
          msg: "worker tokens not reloaded: the old ones stay valid",
          reason,
        });
      }
      failed = reason;
      return;
    }
    failed = "";
    if (tokens.join("\n") === current) return;
    current = tokens.join("\n");
    apply(tokens);
  };
  const timer = setInterval(check, options.every);
  Deno.unrefTimer(timer);
  let hangup = false;
  try {
    Deno.addSignalListener("SIGHUP", check);
    hangup = true;
  } catch {
    // No SIGHUP here (Windows): the periodic read alone.
  }
  options.signal.addEventListener("abort", () => {
    clearInterval(timer);
    if (hangup) Deno.removeSignalListener("SIGHUP", check);
  }, { once: true });
}

/** Builds serveHub options from parsed flags and the environment. */
export function optionsFrom(
  values: Record<string, string | string[] | boolean | undefined>,
  log: (record: HubLogRecord) => void,
): ServeHubOptions {
  const v = (flag: string, env: string) =>
    flagOrEnv(values[flag] as string | undefined, env);
  // Errors name the flag or the variable, whichever gave the value.
  const nameOf = (flag: string, env: string) =>
    sourceOf(values[flag], flag, env);
  const duration = (flag: string, env: string, fallback: number) =>
    parseDuration(v(flag, env), nameOf(flag, env), fallback);
  const int = (
    flag: string,
    env: string,
    fallback: number,
    min?: number,
    max?: number,
  ) => parseInteger(v(flag, env), nameOf(flag, env), fallback, min, max);
  const file = (flag: string, env: string, what: string) => {
    const path = v(flag, env);
    return path === undefined ? undefined : readText(path, what);
  };
  const tokens = workerTokensFrom(values);
  const routes: Route[] = [];
  let pools: ServeHubOptions["pools"];
  const config = file("config", "POTHEAD_CONFIG", "config file");
  if (config !== undefined) {
    let parsed;
    try {
      parsed = JSON.parse(config);
    } catch (error) {
      throw new UsageError(
        `Cannot parse --config: ${(error as Error).message}`,
      );
    }
    if (
      parsed === null || typeof parsed !== "object" || Array.isArray(parsed)
    ) {
      throw new UsageError(
        'Invalid --config: expected an object { "routes": [...], "pools": {...} }',
      );
    }
    for (const key of Object.keys(parsed)) {
      if (key !== "routes" && key !== "pools") {
        throw new UsageError(
          `Invalid --config: unknown key ${
            JSON.stringify(key)
          } (known: routes, pools)`,
        );
      }
    }
    if (parsed.routes !== undefined && !Array.isArray(parsed.routes)) {
      throw new UsageError('Invalid --config: "routes" must be an array');
    }
    if (Array.isArray(parsed.routes)) routes.push(...parsed.routes);
    pools = parsed.pools;
    // A number is milliseconds, as in the library; a string is a duration
    // like the flags' ("30s"), where a bare number means seconds.
    for (const [name, p] of Object.entries(pools ?? {})) {
      for (
        const field of [
          "queueTimeout",
          "priorityStep",
          "affinityWait",
          "headTimeout",
          "bodyIdleTimeout",
          "uploadIdleTimeout",
        ] as const
      ) {
        const t = (p as Record<string, unknown> | null)?.[field];
        if (typeof t === "string") {
          p[field] = parseDuration(t, `--config pools.${name}.${field}`, 0);
        }
      }
      // Sizes as the flags take them: 0 is no limit (JSON has no Infinity).
      for (
        const field of ["maxRequestBodySize", "maxResponseBodySize"] as const
      ) {
        if ((p as Record<string, unknown> | null)?.[field] === 0) {
          p[field] = Infinity;
        }
      }
    }
  }
  for (const rule of values.route as string[] ?? []) {
    routes.push(parseRoute(rule));
  }
  const trust = switchOn(values["trust-forwarded"], "POTHEAD_TRUST_FORWARDED");
  const trustedProxies = (v("trusted-proxies", "POTHEAD_TRUSTED_PROXIES") ?? "")
    .split(/[\s,]+/).filter((r) => r !== "");
  for (const range of trustedProxies) {
    try {
      parseAddressRange(range);
    } catch (error) {
      throw new UsageError(
        `Invalid ${nameOf("trusted-proxies", "POTHEAD_TRUSTED_PROXIES")}: ${
          (error as Error).message
        }`,
      );
    }
  }
  if (trust && trustedProxies.length > 0) {
    throw new UsageError(
      "--trusted-proxies names the proxies to trust and --trust-forwarded trusts every peer: use one",
    );
  }
  const forwardedField = v("forwarded-field", "POTHEAD_FORWARDED_FIELD");
  if (
    forwardedField !== undefined && forwardedField !== "x-forwarded-for" &&
    forwardedField !== "forwarded"
  ) {
    throw new UsageError(
      `Invalid ${
        nameOf("forwarded-field", "POTHEAD_FORWARDED_FIELD")
      }: expected x-forwarded-for or forwarded, got "${forwardedField}"`,
    );
  }
  const trustPriority = switchOn(
    values["trust-priority"],
    "POTHEAD_TRUST_PRIORITY",
  );
  const bufferUploads = switchOn(
    values["buffer-uploads"],
    "POTHEAD_BUFFER_UPLOADS",
  );
  const webSockets = !switchOn(
    values["no-websockets"],
    "POTHEAD_NO_WEBSOCKETS",
  );
  const reusePort = switchOn(values["reuse-port"], "POTHEAD_REUSE_PORT");
  // Named here with the flag to pass, rather than as serveHub's TypeError.
  if (reusePort && !hasUnstableNet()) {
    throw new UsageError(
      "Invalid --reuse-port: Deno needs the --unstable-net flag for it " +
        "(deno run --unstable-net ... hub.ts --reuse-port)",
    );
  }
  const fairBy = v("fair-by", "POTHEAD_FAIR_BY");
  if (fairBy !== undefined && !FAIR_BY.test(fairBy)) {
    throw new UsageError(
      `Invalid ${
        nameOf("fair-by", "POTHEAD_FAIR_BY")
      }: expected ip or header:NAME, got "${fairBy}"`,
    );
  }
  const affinityBy = v("affinity-by", "POTHEAD_AFFINITY_BY");
  if (affinityBy !== undefined && !FAIR_BY.test(affinityBy)) {
    throw new UsageError(
      `Invalid ${
        nameOf("affinity-by", "POTHEAD_AFFINITY_BY")
      }: expected ip or header:NAME, got "${affinityBy}"`,
    );
  }
  const affinityWait = duration(
    "affinity-wait",
    "POTHEAD_AFFINITY_WAIT",
    0,
  );
  // A wait with no affinity anywhere would be silently ignored.
  if (
    affinityWait > 0 && affinityBy === undefined &&
    !anyPoolSets(pools, "affinityBy")
  ) {
    throw new UsageError(
      "--affinity-wait needs --affinity-by (or affinityBy in a --config pool): it is how long a request waits for its key's worker",
    );
  }
  const holdAhead = switchOn(values["hold-ahead"], "POTHEAD_HOLD_AHEAD");
  // Refused here by its flag rather than as the library's TypeError.
  if (holdAhead && (fairBy !== undefined || affinityBy !== undefined)) {
    throw new UsageError(
      `Invalid ${nameOf("hold-ahead", "POTHEAD_HOLD_AHEAD")}: not with ${
        fairBy !== undefined
          ? nameOf("fair-by", "POTHEAD_FAIR_BY")
          : nameOf("affinity-by", "POTHEAD_AFFINITY_BY")
      } (a held request would skip its order)`,
    );
  }
  const fairShare = v("fair-share", "POTHEAD_FAIR_SHARE");
  if (
    fairShare !== undefined && fairShare !== "requests" && fairShare !== "time"
  ) {
    throw new UsageError(
      `Invalid ${
        nameOf("fair-share", "POTHEAD_FAIR_SHARE")
      }: expected requests or time, got "${fairShare}"`,
    );
  }
  const weightRules = values["fair-weight"] as string[] | undefined;
  const weightsEnv = Deno.env.get("POTHEAD_FAIR_WEIGHTS");
  const fairWeights = weightRules !== undefined && weightRules.length > 0
    ? parseWeights(weightRules)
    : weightsEnv !== undefined && weightsEnv.trim() !== ""
    ? parseWeights(
      weightsEnv.split(",").map((rule) => rule.trim()),
      "POTHEAD_FAIR_WEIGHTS",
    )
    : undefined;
  const perKey = v("max-queue-per-key", "POTHEAD_MAX_QUEUE_PER_KEY");
  // Named here by the flag or variable rather than as the library's option:
  // without a key to queue by, these settings would mean nothing.
  if (fairBy === undefined && !anyPoolSets(pools, "fairBy")) {
    const given = [
      ["fair-share", "POTHEAD_FAIR_SHARE", fairShare],
      ["fair-weight", "POTHEAD_FAIR_WEIGHTS", fairWeights],
      ["max-queue-per-key", "POTHEAD_MAX_QUEUE_PER_KEY", perKey],
    ].find(([, , value]) => value !== undefined);
    if (given !== undefined) {
      const [flag, env] = given as [string, string];
      throw new UsageError(
        `Invalid ${
          nameOf(flag, env)
        }: it is a fair-queuing setting, which needs --fair-by (or fairBy in a --config pool)`,
      );
    }
  }
  // Each half of a pair alone is refused by its own name.
  for (
    const [a, aEnv, b, bEnv] of [
      ["cert", "POTHEAD_CERT", "key", "POTHEAD_KEY"],
      [
        "worker-cert",
        "POTHEAD_WORKER_CERT",
        "worker-key",
        "POTHEAD_WORKER_KEY",
      ],
    ]
  ) {
    const hasA = v(a, aEnv) !== undefined;
    if (hasA !== (v(b, bEnv) !== undefined)) {
      const [flag, env, other] = hasA ? [a, aEnv, b] : [b, bEnv, a];
      throw new UsageError(
        `Invalid ${nameOf(flag, env)}: it needs --${other} as well`,
      );
    }
  }
  const step = v("priority-step", "POTHEAD_PRIORITY_STEP");
  const hostname = v("hostname", "POTHEAD_HOSTNAME") ?? "0.0.0.0";
  if (hostname.trim() === "") {
    throw new UsageError(
      `Invalid ${
        nameOf("hostname", "POTHEAD_HOSTNAME")
      }: expected an address such as 0.0.0.0 or ::, got an empty value`,
    );
  }
  // Named here by its flag or variable, rather than as serveHub's
  // RangeError about "pingTimeout".
  const pingTimeout = duration("ping-timeout", "POTHEAD_PING_TIMEOUT", 10_000);
  if (pingTimeout === 0) {
    throw new UsageError(
      `Invalid ${
        nameOf("ping-timeout", "POTHEAD_PING_TIMEOUT")
      }: expected a duration above 0 (--ping-interval 0 turns pings off)`,
    );
  }
  return {
    hostname,
    port: int("port", "POTHEAD_PORT", 8080, 0, 65535),
    workerPort: int("worker-port", "POTHEAD_WORKER_PORT", 4040, 0, 65535),
    maxQueue: int("max-queue", "POTHEAD_MAX_QUEUE", 10_000),
    queueTimeout: duration("queue-timeout", "POTHEAD_QUEUE_TIMEOUT", 30_000),
    fairBy: fairBy as ServeHubOptions["fairBy"],
    affinityBy: affinityBy as ServeHubOptions["affinityBy"],
    affinityWait,
    holdAhead: holdAhead || undefined,
    fairShare,
    fairWeights,
    priorityStep: step === undefined ? undefined : parseDuration(
      step,
      nameOf("priority-step", "POTHEAD_PRIORITY_STEP"),
      0,
    ),
    maxQueuePerKey: perKey === undefined ? undefined : parseInteger(
      perKey,
      nameOf("max-queue-per-key", "POTHEAD_MAX_QUEUE_PER_KEY"),
      0,
      1,
    ),
    headTimeout: duration("head-timeout", "POTHEAD_HEAD_TIMEOUT", 300_000),
    bodyIdleTimeout: duration(
      "body-idle-timeout",
      "POTHEAD_BODY_IDLE_TIMEOUT",
      120_000,
    ),
    uploadIdleTimeout: duration(
      "upload-idle-timeout",
      "POTHEAD_UPLOAD_IDLE_TIMEOUT",
      60_000,
    ),
    maxRetries: int("max-retries", "POTHEAD_MAX_RETRIES", 2),
    limits: {
      maxHeadSize: int(
        "max-head-size",
        "POTHEAD_MAX_HEAD_SIZE",
        64 * 1024,
        256,
      ),
    },
    maxResponseBodySize:
      int("max-response-body", "POTHEAD_MAX_RESPONSE_BODY", 0) || Infinity,
    maxRequestBodySize:
      int("max-request-body", "POTHEAD_MAX_REQUEST_BODY", 0) || Infinity,
    responseBuffer: int(
      "response-buffer",
      "POTHEAD_RESPONSE_BUFFER",
      1024 * 1024,
    ),
    responseBufferTotal: int(
      "response-buffer-total",
      "POTHEAD_RESPONSE_BUFFER_TOTAL",
      64 * 1024 * 1024,
    ),
    responseSpillDir: spillDir(
      nameOf("response-spill-dir", "POTHEAD_RESPONSE_SPILL_DIR"),
      v("response-spill-dir", "POTHEAD_RESPONSE_SPILL_DIR"),
    ),
    responseSpillMax: int(
      "response-spill-max",
      "POTHEAD_RESPONSE_SPILL_MAX",
      1024 * 1024 * 1024,
    ),
    responseSpillTotal: int(
      "response-spill-total",
      "POTHEAD_RESPONSE_SPILL_TOTAL",
      16 * 1024 * 1024 * 1024,
    ),
    requestBuffer: int("request-buffer", "POTHEAD_REQUEST_BUFFER", 1024 * 1024),
    requestBufferTotal: int(
      "request-buffer-total",
      "POTHEAD_REQUEST_BUFFER_TOTAL",
      64 * 1024 * 1024,
    ),
    requestSpillDir: spillDir(
      nameOf("request-spill-dir", "POTHEAD_REQUEST_SPILL_DIR"),
      v("request-spill-dir", "POTHEAD_REQUEST_SPILL_DIR"),
    ),
    requestSpillMax: int(
      "request-spill-max",
      "POTHEAD_REQUEST_SPILL_MAX",
      1024 * 1024 * 1024,
    ),
    requestSpillTotal: int(
      "request-spill-total",
      "POTHEAD_REQUEST_SPILL_TOTAL",
      16 * 1024 * 1024 * 1024,
    ),
    bufferUploads,
    webSockets,
    maxWebSocketMessage: int(
      "max-websocket-message",
      "POTHEAD_MAX_WEBSOCKET_MESSAGE",
      16 * 1024 * 1024,
      1,
    ),
    shutdownGrace: duration("shutdown-grace", "POTHEAD_SHUTDOWN_GRACE", 30_000),
    reusePort,
    handshakeWait: duration("handshake-wait", "POTHEAD_HANDSHAKE_WAIT", 50),
    pingInterval: duration("ping-interval", "POTHEAD_PING_INTERVAL", 30_000),
    pingTimeout,
    trustForwarded: trust,
    trustedProxies,
    forwardedField,
    trustPriority,
    workerTokens: tokens,
    routes,
    pools,
    cert: file("cert", "POTHEAD_CERT", "certificate"),
    key: file("key", "POTHEAD_KEY", "key"),
    workerCert: file("worker-cert", "POTHEAD_WORKER_CERT", "certificate"),
    workerKey: file("worker-key", "POTHEAD_WORKER_KEY", "key"),
    onLog: log,
  };
}

// Whether a --config pool sets `option` (to other than null).
function anyPoolSets(
  pools: ServeHubOptions["pools"],
  option: "fairBy" | "affinityBy",
): boolean {
  return Object.values(pools ?? {}).some((p) =>
    p?.[option] !== undefined && p[option] !== null
  );
}

// A spill directory option's value, checked to be a directory the hub can
// make files in (a usage error, exit 2, rather than warnings under load).
function spillDir(flag: string, dir: string | undefined): string | undefined {
  if (dir === undefined) return undefined;
  try {
    const probe = Deno.makeTempFileSync({ dir, prefix: "pothead-probe-" });
    Deno.removeSync(probe);
  } catch (error) {
    throw new UsageError(
      `Invalid ${flag}: cannot make a file in "${dir}": ${
        (error as Error).message
      }`,
    );
  }
  return dir;
}

/**
 * The hub command line. Returns the exit code.
 *
 * @param args command-line arguments, without the program name.
 */
export async function main(args: string[] = Deno.args): Promise<number> {
  let values;
  try {
    values = parseArgs({
      args,
      options: {
        hostname: { type: "string" },
        port: { type: "string" },
        "worker-port": { type: "string" },
        "max-queue": { type: "string" },
        "queue-timeout": { type: "string" },
        "fair-by": { type: "string" },
        "affinity-by": { type: "string" },
        "affinity-wait": { type: "string" },
        "hold-ahead": { type: "boolean" },
        "fair-share": { type: "string" },
        "fair-weight": { type: "string", multiple: true },
        "max-queue-per-key": { type: "string" },
        "head-timeout": { type: "string" },
        "body-idle-timeout": { type: "string" },
        "upload-idle-timeout": { type: "string" },
        "max-retries": { type: "string" },
        "max-head-size": { type: "string" },
        "max-response-body": { type: "string" },
        "max-request-body": { type: "string" },
        "response-buffer": { type: "string" },
        "response-buffer-total": { type: "string" },
        "response-spill-dir": { type: "string" },
        "response-spill-max": { type: "string" },
        "response-spill-total": { type: "string" },
        "request-buffer": { type: "string" },
        "request-buffer-total": { type: "string" },
        "request-spill-dir": { type: "string" },
        "request-spill-max": { type: "string" },
        "request-spill-total": { type: "string" },
        "shutdown-grace": { type: "string" },
        "trust-forwarded": { type: "boolean" },
        "trusted-proxies": { type: "string" },
        "forwarded-field": { type: "string" },
        "trust-priority": { type: "boolean" },
        "priority-step": { type: "string" },
        "buffer-uploads": { type: "boolean" },
        "no-websockets": { type: "boolean" },
        "reuse-port": { type: "boolean" },
        "max-websocket-message": { type: "string" },
        cert: { type: "string" },
        key: { type: "string" },
        "worker-cert": { type: "string" },
        "worker-key": { type: "string" },
        "worker-token": { type: "string", multiple: true },
        "worker-token-file": { type: "string" },
        "handshake-wait": { type: "string" },
        "ping-interval": { type: "string" },
        "ping-timeout": { type: "string" },
        route: { type: "string", multiple: true },
        config: { type: "string" },
        "log-level": { type: "string" },
        "admin-port": { type: "string" },
        "admin-hostname": { type: "string" },
        "ready-min-slots": { type: "string" },
        "access-log": { type: "string" },
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (error) {
    console.error(`pothead: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if (values.version) {
    console.log(`pothead ${VERSION}`);
    return 0;
  }
  let options: ServeHubOptions;
  let admin: { port: number; hostname: string; readyMinSlots: number } | null =
    null;
  let accessLog: "text" | "json" | "off";
  try {
    const adminPort = flagOrEnv(values["admin-port"], "POTHEAD_ADMIN_PORT");
    for (
      const [flag, env] of [
        ["admin-hostname", "POTHEAD_ADMIN_HOSTNAME"],
        ["ready-min-slots", "POTHEAD_READY_MIN_SLOTS"],
      ] as const
    ) {
      if (
        adminPort === undefined && flagOrEnv(values[flag], env) !== undefined
      ) {
        throw new UsageError(
          `Invalid ${
            sourceOf(values[flag], flag, env)
          }: it sets the admin listener, which needs --admin-port (or POTHEAD_ADMIN_PORT)`,
        );
      }
    }
    if (adminPort !== undefined) {
      const adminHostname =
        flagOrEnv(values["admin-hostname"], "POTHEAD_ADMIN_HOSTNAME") ??
          "127.0.0.1";
      // Refused before any listener starts, as an empty --hostname is.
      if (adminHostname.trim() === "") {
        throw new UsageError(
          `Invalid ${
            sourceOf(
              values["admin-hostname"],
              "admin-hostname",
              "POTHEAD_ADMIN_HOSTNAME",
            )
          }: expected an address such as 127.0.0.1 or ::, got an empty value`,
        );
      }
      admin = {
        port: parseInteger(
          adminPort,
          sourceOf(values["admin-port"], "admin-port", "POTHEAD_ADMIN_PORT"),
          0,
          0,
          65535,
        ),
        hostname: adminHostname,
        readyMinSlots: parseInteger(
          flagOrEnv(values["ready-min-slots"], "POTHEAD_READY_MIN_SLOTS"),
          sourceOf(
            values["ready-min-slots"],
            "ready-min-slots",
            "POTHEAD_READY_MIN_SLOTS",
          ),
          1,
        ),
      };
    }
    const format = flagOrEnv(values["access-log"], "POTHEAD_ACCESS_LOG") ??
      "off";
    if (format !== "text" && format !== "json" && format !== "off") {
      throw new UsageError(
        `Invalid ${
          sourceOf(values["access-log"], "access-log", "POTHEAD_ACCESS_LOG")
        }: expected text, json or off, got "${format}"`,
      );
    }
    accessLog = format;
    const levelName = flagOrEnv(values["log-level"], "POTHEAD_LOG_LEVEL") ??
      "info";
    const level = LEVELS.indexOf(levelName);
    if (level < 0) {
      throw new UsageError(
        `Invalid ${
          sourceOf(values["log-level"], "log-level", "POTHEAD_LOG_LEVEL")
        }: expected one of ${LEVELS.join(", ")}, got "${levelName}"`,
      );
    }
    options = optionsFrom(values, (record) => {
      if (LEVELS.indexOf(record.level) < level) return;
      const { level: lv, msg, ...fields } = record;
      const extra = Object.entries(fields)
        .map(([k, val]) => `${k}=${JSON.stringify(val)}`)
        .join(" ");
      console.error(
        `${new Date().toISOString()} ${lv} ${msg}${extra ? " " + extra : ""}`,
      );
    });
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    console.error(`pothead: ${error.message}`);
    return 2;
  }
  const metrics = new HubMetrics();
  if (admin !== null || accessLog !== "off") {
    const format = accessLog;
    options.onAccess = (record) => {
      metrics.observe(record);
      if (format !== "off") console.log(formatAccess(record, format));
    };
  }
  let server: HubServer;
  const adminStop = new AbortController();
  let adminServer: Deno.HttpServer<Deno.NetAddr> | null = null;
  try {
    server = serveHub(options);
  } catch (error) {
    // The hub's own option checks (a --config route or pool, --ping-timeout
    // 0) refuse the operator's input like any invalid flag; only a listener
    // that cannot start (address in use) is not a usage error.
    const usage = error instanceof TypeError || error instanceof RangeError;
    console.error(
      `pothead: ${usage ? "invalid options" : "cannot start"}: ${
        (error as Error).message
      }`,
    );
    return usage ? 2 : 1;
  }
  if (admin !== null) {
    try {
      adminServer = Deno.serve(
        {
          hostname: admin.hostname,
          port: admin.port,
          signal: adminStop.signal,
          onListen() {},
          ...(options.reusePort ? { reusePort: true } : {}),
        },
        createAdminHandler(server.hub, metrics, {
          readyMinSlots: admin.readyMinSlots,
          version: VERSION,
          signal: adminStop.signal,
        }),
      );
    } catch (error) {
      console.error(
        `pothead: cannot start admin listener: ${(error as Error).message}`,
      );
      await server.shutdown();
      return 1;
    }
  }
  // Keeps the status page's history without gaps while nobody watches it.
  const sampler = admin === null
    ? undefined
    : setInterval(() => metrics.sample(server.hub.stats), 1000);
  const tls = options.cert !== undefined;
  const workerTls = options.workerCert !== undefined;
  // With an access log, stdout carries access records only (a shipper may
  // parse every line as JSON): the start lines go to stderr.
  const say = accessLog === "off" ? console.log : console.error;
  say(
    `Listening on ${
      formatAddr(tls ? "https" : "http", server.addr)
    } (consumers)`,
  );
  say(
    `Listening on ${
      formatAddr(workerTls ? "tls" : "tcp", server.workerAddr)
    } (workers${
      options.workerTokens?.length ? ", handshake with token required" : ""
    })`,
  );
  if (adminServer !== null) {
    say(`Listening on ${formatAddr("http", adminServer.addr)} (admin)`);
  }
  const unwatch = new AbortController();
  if (
    flagOrEnv(
      values["worker-token-file"] as string | undefined,
      "POTHEAD_WORKER_TOKEN_FILE",
    ) !== undefined
  ) {
    watchTokens(
      () => workerTokensFrom(values),
      (tokens) => server.hub.setWorkerTokens(tokens),
      options.onLog ?? (() => {}),
      {
        current: options.workerTokens ?? [],
        every: TOKEN_FILE_CHECK,
        signal: unwatch.signal,
      },
    );
  }
  let signals = 0;
  const { promise: stopped, resolve: stop } = Promise.withResolvers<void>();
  const onSignal = () => {
    if (++signals > 1) Deno.exit(1);
    console.error(
      options.reusePort
        ? "pothead: handing over (send the signal again to exit now)"
        : "pothead: shutting down (send the signal again to exit now)",
    );
    // Handing over, the admin listener goes at once too: the other hub's
    // answers /readyz and /metrics on the same port.
    if (options.reusePort) adminStop.abort();
    server.shutdown().then(async () => {
      clearInterval(sampler);
      adminStop.abort();
      await adminServer?.finished;
    }).then(stop);
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  await stopped;
  unwatch.abort();
  Deno.removeSignalListener("SIGINT", onSignal);
  Deno.removeSignalListener("SIGTERM", onSignal);
  return 0;
}
