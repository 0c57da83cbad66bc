/**
 * The hub's admin listener as a fetch handler: Prometheus metrics, health
 * and readiness probes, a JSON status, a server-sent event stream of that
 * status, and the live status page.
 *
 * It is meant for operators and scrapers on a private address (the hub CLI
 * binds it to 127.0.0.1 by default); it has no authentication.
 *
 * @module
 */

import type { HubStats } from "./hub.ts";
import type { HubMetrics, PoolStatus } from "./_metrics.ts";
import { statusPage } from "./_status_page.ts";
import { VERSION } from "./_cli.ts";

/** Where the admin handler reads the hub's stats. A `Hub` fits. */
export interface StatsSource {
  /** The hub's stats: totals, and gauges per pool and per worker. */
  readonly stats: HubStats;
}

/** The hub's totals: its stats without the per-pool and per-worker lists. */
export type HubTotals = Omit<HubStats, "pools" | "workers">;

/** Options for {@linkcode createAdminHandler}. Every field is optional. */
export interface AdminOptions {
  /**
   * Worker slots that must be connected for `/readyz` to answer 200.
   * @default {1}
   */
  readyMinSlots?: number;
  /**
   * The version shown by `/status` and the status page.
   * @default {the version in deno.json}
   */
  version?: string;
  /**
   * Milliseconds between snapshots on `/events`.
   * @default {1000}
   */
  eventInterval?: number;
  /**
   * Aborting it ends every open `/events` stream, so that a server
   * shutting down is not held open by status pages.
   */
  signal?: AbortSignal;
}

/** The JSON body of `/status` and of each `/events` message. */
export interface AdminStatus {
  /** The hub's version. */
  version: string;
  /** When the metrics started, as an ISO date. */
  startedAt: string;
  /** Seconds since then. */
  uptimeSeconds: number;
  /** The time of the snapshot, in milliseconds since the epoch. */
  now: number;
  /** Whether `/readyz` would answer 200. */
  ready: boolean;
  /** The hub's counters and gauges as a whole. */
  stats: HubTotals;
  /** Per pool: stats, recent percentiles, history and workers. */
  pools: PoolStatus[];
}

const ENCODER = new TextEncoder();

// Slots that can serve requests: those of pools the hub's options name (a
// worker declaring a pool no route leads to serves nothing).
function servingSlots(stats: HubStats): number {
  const pools = (stats as { pools?: HubStats["pools"] }).pools;
  if (pools === undefined || pools.length === 0) return stats.slots;
  let n = 0;
  for (const p of pools) if (p.named) n += p.slots;
  return n;
}

const PAGE_CSP = "default-src 'none'; script-src 'unsafe-inline'; " +
  "style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; " +
  "base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

// A whole body with its length, so that a HEAD answer (no body) can carry
// the same Content-Length as GET's instead of 0.
function reply(status: number, text: string, extra: HeadersInit): Response {
  const body = ENCODER.encode(text);
  const headers = new Headers(extra);
  headers.set("content-length", String(body.length));
  headers.set("cache-control", "no-store");
  return new Response(body, { status, headers });
}

function text(status: number, body: string, extra: HeadersInit = {}): Response {
  const headers = new Headers(extra);
  headers.set("content-type", "text/plain; charset=utf-8");
  return reply(status, body, headers);
}

/**
 * Makes the admin listener's handler. Routes (GET or HEAD; other methods get
 * 405, other paths 404):
 *
 * - `/metrics`: Prometheus text format 0.0.4.
 * - `/healthz`: 200 `ok` while the process serves HTTP.
 * - `/readyz`: 200 when the hub is not draining and at least `readyMinSlots` worker slots are
 *   connected to pools the hub's options name (`PoolStats.named`), else 503; the body says
 *   why.
 * - `/status`: JSON ({@linkcode AdminStatus}).
 * - `/events`: server-sent events, one {@linkcode AdminStatus} message per
 *   `eventInterval`; ends when the client leaves or `signal` aborts.
 * - `/`: the live status page.
 *
 * @example Serve it next to a hub
 * ```ts ignore
 * const metrics = new HubMetrics();
 * const server = serveHub({ onAccess: (r) => metrics.observe(r) });
 * Deno.serve(
 *   { hostname: "127.0.0.1", port: 9090 },
 *   createAdminHandler(server.hub, metrics),
 * );
 * ```
 *
 * @param hub where to read stats (a `Hub`).
 * @param metrics the metrics the hub's `onAccess` feeds.
 * @param options readiness threshold, version, event interval, signal.
 * @returns a fetch handler.
 * @throws {RangeError} naming an invalid option.
 */
export function createAdminHandler(
  hub: StatsSource,
  metrics: HubMetrics,
  options: AdminOptions = {},
): (req: Request) => Response {
  const readyMinSlots = options.readyMinSlots ?? 1;
  if (!Number.isInteger(readyMinSlots) || readyMinSlots < 0) {
    throw new RangeError(
      `Invalid option "readyMinSlots": expected an integer >= 0, got ${readyMinSlots}`,
    );
  }
  const interval = options.eventInterval ?? 1000;
  if (!(interval >= 10) || !Number.isFinite(interval)) {
    throw new RangeError(
      `Invalid option "eventInterval": expected milliseconds >= 10, got ${interval}`,
    );
  }
  const version = options.version ?? VERSION;
  const page = statusPage({ version });

  function snapshot(): AdminStatus {
    const stats = hub.stats;
    metrics.sample(stats);
    const now = metrics.now();
    const { pools: _pools, workers: _workers, ...totals } = stats;
    return {
      version,
      startedAt: new Date(metrics.startedAt).toISOString(),
      uptimeSeconds: Math.max(0, Math.round(now - metrics.startedAt) / 1000),
      now,
      ready: !stats.draining && servingSlots(stats) >= readyMinSlots,
      stats: totals,
      pools: metrics.status(stats),
    };
  }

  // One snapshot serves every /events subscriber for half an interval:
  // each runs on its own timer, and computing the snapshot per subscriber
  // made the hub's cost grow with how many watch (or connect and never read).
  let shared: { at: number; text: string } | null = null;
  function eventText(): string {
    const at = performance.now();
    if (shared === null || at - shared.at >= interval / 2) {
      shared = { at, text: `data: ${JSON.stringify(snapshot())}\n\n` };
    }
    return shared.text;
  }

  function events(req: Request): Response {
    let timer: ReturnType<typeof setInterval> | undefined;
    let close = () => {};
    const stop = () => {
      clearInterval(timer);
      timer = undefined;
      req.signal.removeEventListener("abort", close);
      options.signal?.removeEventListener("abort", close);
    };
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        close = () => {
          stop();
          try {
            controller.close();
          } catch {
            // already closed or cancelled
          }
        };
        const send = () => {
          // A client that does not read gets no backlog: skip a beat.
          if ((controller.desiredSize ?? 1) <= 0) return;
          controller.enqueue(ENCODER.encode(eventText()));
        };
        if (req.signal.aborted || options.signal?.aborted) {
          controller.close();
          return;
        }
        req.signal.addEventListener("abort", close, { once: true });
        options.signal?.addEventListener("abort", close, { once: true });
        controller.enqueue(ENCODER.encode("retry: 2000\n\n"));
        send();
        timer = setInterval(send, interval);
      },
      cancel() {
        // The client went away: Deno.serve cancels the body.
        stop();
      },
    }, { highWaterMark: 2 });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-store",
        // nginx and similar proxies would otherwise buffer the stream.
        "x-accel-buffering": "no",
      },
    });
  }

  function route(req: Request, path: string): Response {
    switch (path) {
      case "/metrics":
        return reply(200, metrics.render(hub.stats), {
          "content-type": "text/plain; version=0.0.4; charset=utf-8",
        });
      case "/healthz":
        return text(200, "ok\n");
      case "/readyz": {
        const stats = hub.stats;
        // Draining: the consumer listener is closing, so send no more.
        if (stats.draining) return text(503, "not ready: draining\n");
        const slots = servingSlots(stats);
        const noun = slots === 1 ? "slot" : "slots";
        return slots >= readyMinSlots
          ? text(200, `ready: ${slots} worker ${noun} connected\n`)
          : text(
            503,
            `not ready: ${slots} worker ${noun} connected, need at least ${readyMinSlots}\n`,
          );
      }
      case "/status":
        return reply(200, JSON.stringify(snapshot()), {
          "content-type": "application/json; charset=utf-8",
        });
      case "/events":
        return events(req);
      case "/":
        return reply(200, page, {
          "content-type": "text/html; charset=utf-8",
          "content-security-policy": PAGE_CSP,
          "x-content-type-options": "nosniff",
        });
      default:
        return text(404, `not found: ${path}\n`);
    }
  }

  return (req: Request): Response => {
    if (req.method !== "GET" && req.method !== "HEAD") {
      return text(405, `method not allowed: ${req.method}\n`, {
        allow: "GET, HEAD",
      });
    }
    const path = new URL(req.url).pathname;
    if (req.method === "HEAD") {
      if (path === "/events") {
        // An empty stream, not null: a null body is announced as
        // content-length: 0, and GET's stream has no length.
        const empty = new ReadableStream({ start: (c) => c.close() });
        return new Response(empty, {
          headers: {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-store",
          },
        });
      }
      const res = route(req, path);
      void res.body?.cancel();
      return new Response(null, { status: res.status, headers: res.headers });
    }
    return route(req, path);
  };
}
