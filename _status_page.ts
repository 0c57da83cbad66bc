/**
 * The hub's live status page: one self-contained HTML document (inline CSS
 * and script, no external requests) served at the admin listener's root.
 *
 * The page reads the JSON snapshots of `/events` (server-sent events) and
 * falls back to polling `/status` when event streams fail, e.g. behind a
 * proxy that buffers them. URLs are relative, so the page also works when
 * the admin listener is mounted under a path prefix. Every number carries a
 * `data-metric` attribute and every chart a `data-last` attribute, which the
 * browser test reads.
 *
 * @module
 */

/** Options for {@linkcode statusPage}. */
export interface StatusPageOptions {
  /** The version shown in the header until the first snapshot arrives. */
  version?: string;
  /**
   * Milliseconds between `/status` polls when event streams fail.
   * @default {1000}
   */
  pollInterval?: number;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * The status page as an HTML string.
 *
 * @param options version to show and the polling interval.
 * @returns a complete HTML document.
 */
export function statusPage(options: StatusPageOptions = {}): string {
  const version = escapeHtml(options.version ?? "");
  const poll = Math.max(100, Math.floor(options.pollInterval ?? 1000));
  return PAGE.replace("%VERSION%", () => version).replace(
    "%POLL%",
    () => String(poll),
  );
}

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>POTHEAD hub status</title>
<link rel="icon" href="data:,">
<style>
:root {
  --bg: #f6f7f9; --card: #fff; --fg: #1d2330; --muted: #667085; --line: #e3e6ec;
  --blue: #2563eb; --orange: #ea7a12; --green: #16a34a; --red: #dc2626; --violet: #7c3aed;
  color-scheme: light dark;
}
@media (prefers-color-scheme: dark) {
  :root { --bg: #111418; --card: #1a1f26; --fg: #e6e9ef; --muted: #98a2b3; --line: #2a313b; }
}
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: baseline; gap: 16px; flex-wrap: wrap;
  padding: 14px 24px; background: var(--card); border-bottom: 1px solid var(--line); }
header h1 { margin: 0; font-size: 18px; letter-spacing: .02em; }
header .meta { color: var(--muted); }
header .spacer { flex: 1; }
#mode { display: inline-flex; align-items: center; gap: 6px; color: var(--muted); }
#mode::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: var(--muted); }
#mode[data-mode="live"]::before { background: var(--green); }
#mode[data-mode="polling"]::before { background: var(--orange); }
#mode[data-mode="offline"]::before { background: var(--red); }
main { padding: 20px 24px 32px; max-width: 1280px; margin: 0 auto; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 12px 14px; }
.card h2 { margin: 0 0 4px; font-size: 12px; font-weight: 600; color: var(--muted);
  text-transform: uppercase; letter-spacing: .05em; }
.card .big { font-size: 28px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .sub { color: var(--muted); font-variant-numeric: tabular-nums; }
.card .of { color: var(--muted); font-weight: 500; font-size: 20px; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(360px, 1fr)); gap: 12px; margin-top: 16px; }
.chart svg { width: 100%; height: 170px; display: block; }
.chart .legend { display: flex; gap: 14px; flex-wrap: wrap; color: var(--muted); font-size: 12px; }
.chart .legend i { display: inline-block; width: 10px; height: 3px; margin-right: 5px; vertical-align: middle; }
svg text { fill: var(--muted); font-size: 10px; font-family: inherit; }
svg .grid { stroke: var(--line); stroke-width: 1; }
svg .series { fill: none; stroke-width: 1.8; stroke-linejoin: round; }
section.table { margin-top: 16px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: 600; font-size: 12px; }
td.num, th.num { text-align: right; }
.empty { color: var(--muted); padding: 8px; }
select { font: inherit; }
.bad { color: var(--red); }
tr.gone td { color: var(--muted); }
</style>
</head>
<body>
<header>
  <h1>POTHEAD hub</h1>
  <span class="meta">version <span data-metric="version">%VERSION%</span></span>
  <span class="meta">up <span data-metric="uptime">–</span></span>
  <label class="meta" id="pool-picker" hidden>pool <select id="pool"></select></label>
  <span class="spacer"></span>
  <span id="mode" data-mode="connecting">connecting</span>
</header>
<main>
  <div class="cards">
    <div class="card"><h2>Queue depth</h2>
      <div class="big" data-metric="queued">–</div>
      <div class="sub">oldest waiting <span data-metric="oldest">–</span></div>
      <div class="sub" data-metric="classes"></div>
      <div class="sub" data-metric="keys"></div>
      <div class="sub" data-metric="waiting"></div></div>
    <div class="card"><h2>Busy slots</h2>
      <div class="big"><span data-metric="busy">–</span><span class="of"> / <span data-metric="slots">–</span></span></div>
      <div class="sub"><span data-metric="idle">–</span> idle · <span data-metric="parked">–</span> parked · <span data-metric="slots">–</span> connected ·
        <span data-metric="workers">–</span> <span data-metric="workers-noun">workers</span></div></div>
    <div class="card"><h2>Requests</h2>
      <div class="big" data-metric="rps">–</div>
      <div class="sub">per second · <span data-metric="received">–</span> received</div></div>
    <div class="card"><h2>Queue wait</h2>
      <div class="big" data-metric="queueP50">–</div>
      <div class="sub">median, last minute · p99 <span data-metric="queueP99">–</span></div></div>
    <div class="card"><h2>Worker time</h2>
      <div class="big" data-metric="workerP50">–</div>
      <div class="sub">median, last minute · p99 <span data-metric="workerP99">–</span></div></div>
    <div class="card"><h2>Problems</h2>
      <div class="big" data-metric="failed">–</div>
      <div class="sub">failed · <span data-metric="rejected">–</span> rejected ·
        <span data-metric="abandoned">–</span> abandoned · <span data-metric="retries">–</span> retried</div></div>
  </div>
  <div class="charts">
    <div class="card chart"><h2>Queue and slots</h2>
      <svg id="chart-queue" role="img" aria-label="queue depth over time"></svg>
      <div class="legend" id="legend-queue"></div></div>
    <div class="card chart"><h2>Latency (ms)</h2>
      <svg id="chart-latency" role="img" aria-label="latency over time"></svg>
      <div class="legend" id="legend-latency"></div></div>
    <div class="card chart"><h2>Requests per second</h2>
      <svg id="chart-rps" role="img" aria-label="requests per second over time"></svg>
      <div class="legend" id="legend-rps"></div></div>
  </div>
  <section class="card table"><h2>Workers</h2>
    <table><thead><tr><th>Worker</th><th class="num">Busy / slots</th><th class="num">Requests</th>
      <th class="num">Errors</th><th class="num">Mean worker time</th><th class="num">Last status</th>
      <th class="num">Last seen</th><th>Labels</th></tr></thead>
      <tbody id="workers"></tbody></table>
    <div class="empty" id="workers-empty">No workers connected.</div>
  </section>
</main>
<script>
"use strict";
(() => {
  const POLL_MS = %POLL%;
  const CHARTS = {
    queue: { lines: [["queued", "queued", "--blue"], ["busy", "busy slots", "--orange"], ["idle", "idle slots", "--green"]] },
    latency: { lines: [["queueP50Ms", "queue p50", "--blue"], ["queueP99Ms", "queue p99", "--violet"],
      ["workerP50Ms", "worker p50", "--green"], ["workerP99Ms", "worker p99", "--orange"]] },
    rps: { lines: [["requests", "requests", "--blue"], ["errors", "errors", "--red"]] },
  };
  let selectedPool = null;
  let lastSnapshot = null;
  let source = null;
  let pollTimer = null;
  let retryTimer = null;

  function set(name, text) {
    for (const el of document.querySelectorAll('[data-metric="' + name + '"]')) el.textContent = text;
  }
  function fmtMs(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 10) return ms.toFixed(2) + " ms";
    if (ms < 1000) return Math.round(ms) + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(2) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }
  function fmtUptime(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  function color(v) { return getComputedStyle(document.documentElement).getPropertyValue(v).trim(); }
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function label(v) { return v >= 1000 ? (v / 1000) + "k" : String(Math.round(v * 100) / 100); }

  function span(seconds) {
    return seconds >= 120 ? Math.round(seconds / 60) + " min" : seconds + " s";
  }
  // Shows at least a minute and at most the whole history, so a young hub's
  // history is not squeezed into the right edge.
  function drawChart(name, full, uptime) {
    const svg = document.getElementById("chart-" + name);
    const spec = CHARTS[name];
    const total = full.requests.length;
    const n = Math.min(total, Math.max(60, Math.ceil(uptime) + 1));
    const series = {};
    for (const [key] of spec.lines) series[key] = full[key].slice(total - n);
    const W = Math.max(240, Math.round(svg.clientWidth || 600)), H = 170;
    const L = 38, R = 8, T = 8, B = 18;
    svg.setAttribute("viewBox", "0 0 " + W + " " + H);
    let max = 0, last = null;
    for (const [key] of spec.lines) for (const v of series[key]) if (v !== null && v > max) max = v;
    max = niceMax(max);
    const x = (i) => L + (W - L - R) * (n <= 1 ? 1 : i / (n - 1));
    const y = (v) => T + (H - T - B) * (1 - v / max);
    const parts = [];
    for (const f of [0, 0.5, 1]) {
      const yy = y(max * f).toFixed(1);
      parts.push('<line class="grid" x1="' + L + '" x2="' + (W - R) + '" y1="' + yy + '" y2="' + yy + '"/>');
      parts.push('<text x="' + (L - 5) + '" y="' + (Number(yy) + 3) + '" text-anchor="end">' + label(max * f) + '</text>');
    }
    parts.push('<text x="' + L + '" y="' + (H - 4) + '">-' + span(n) + '</text>');
    parts.push('<text x="' + (W - R) + '" y="' + (H - 4) + '" text-anchor="end">now</text>');
    // The first line is drawn last, on top.
    for (const [key, , cssVar] of spec.lines.slice().reverse()) {
      const values = series[key], stroke = color(cssVar);
      let d = "";
      for (let i = 0; i < n; i++) {
        const v = values[i];
        if (v === null) continue;
        const before = i > 0 && values[i - 1] !== null, after = i < n - 1 && values[i + 1] !== null;
        const px = x(i).toFixed(1), py = y(v).toFixed(1);
        d += (before ? "L" : "M") + px + " " + py;
        // A point without neighbours would be invisible as a path.
        if (!before && !after) parts.push('<circle r="2.5" cx="' + px + '" cy="' + py + '" fill="' + stroke + '"/>');
      }
      if (d) parts.push('<path class="series" stroke="' + stroke + '" d="' + d + '"/>');
    }
    svg.innerHTML = parts.join("");
    const first = series[spec.lines[0][0]];
    for (let i = n - 1; i >= 0; i--) if (first[i] !== null) { last = first[i]; break; }
    svg.dataset.last = last === null ? "" : String(last);
    svg.dataset.max = String(max);
  }
  function drawLegends() {
    for (const name of Object.keys(CHARTS)) {
      const el = document.getElementById("legend-" + name);
      el.replaceChildren();
      for (const [, text, cssVar] of CHARTS[name].lines) {
        const span = document.createElement("span");
        const i = document.createElement("i");
        i.style.background = color(cssVar);
        span.append(i, text);
        el.append(span);
      }
    }
  }

  function drawWorkers(workers, now) {
    const body = document.getElementById("workers");
    body.replaceChildren();
    document.getElementById("workers-empty").hidden = workers.length > 0;
    for (const w of workers.slice(0, 100)) {
      const tr = document.createElement("tr");
      if (w.slots === 0) tr.className = "gone";
      const labels = Object.entries(w.labels).map(([k, v]) => k + "=" + v).join(", ");
      const cells = [w.id, w.slots === 0 ? "gone" : w.busy + " / " + w.slots, w.requests, w.errors,
        fmtMs(w.meanWorkerMs), w.lastStatus === null ? "–" : w.lastStatus,
        w.lastSeen === null ? "–" : Math.max(0, Math.round((now - w.lastSeen) / 1000)) + " s ago", labels];
      cells.forEach((c, i) => {
        const td = document.createElement("td");
        td.textContent = String(c);
        if (i > 0 && i < 7) td.className = "num";
        if (i === 3 && w.errors > 0) td.className = "num bad";
        tr.append(td);
      });
      body.append(tr);
    }
  }

  function update(snap) {
    set("version", snap.version);
    set("uptime", fmtUptime(snap.uptimeSeconds));
    const pools = snap.pools;
    if (!pools.length) return;
    const picker = document.getElementById("pool");
    document.getElementById("pool-picker").hidden = pools.length < 2;
    // By name: a pool that went and another that came keep the count.
    const names = pools.map((p) => p.name).join(" ");
    if ([...picker.options].map((o) => o.value).join(" ") !== names) {
      picker.replaceChildren(...pools.map((p) => new Option(p.name, p.name)));
    }
    const pool = pools.find((p) => p.name === selectedPool) || pools[0];
    picker.value = pool.name;
    const s = pool.stats, r = pool.recent, t = snap.stats;
    set("queued", String(s.queued));
    set("oldest", s.queued === 0 ? "–" : fmtMs(s.oldestWaitMs));
    // Only when a class other than 0 has requests queued.
    const classes = s.classes || [];
    set("classes", classes.length < 2 ? "" : "by class " +
      classes.map((c) => c.priority + ": " + c.queued).join(" · "));
    // Only with fair queuing: how many consumers the queue holds.
    set("keys", !s.keys ? "" : "from " + s.keys +
      (s.keys === 1 ? " consumer" : " consumers"));
    // Only with --affinity-wait: requests waiting for their key's worker,
    // outside the queue.
    set("waiting", !s.waiting ? "" : "+ " + s.waiting + " waiting for " +
      (s.waiting === 1 ? "its worker" : "their workers"));
    set("idle", String(s.idle));
    set("parked", String(s.parked ?? 0));
    set("busy", String(s.busy));
    set("slots", String(s.slots));
    set("workers", String(s.workers));
    set("workers-noun", s.workers === 1 ? "worker" : "workers");
    set("rps", String(r.requestsPerSecond));
    set("received", String(t.received));
    set("queueP50", fmtMs(r.queueP50Ms));
    set("queueP99", fmtMs(r.queueP99Ms));
    set("workerP50", fmtMs(r.workerP50Ms));
    set("workerP99", fmtMs(r.workerP99Ms));
    set("failed", String(t.failed));
    set("rejected", String(t.rejectedFull + (t.rejectedKeyFull ?? 0) + t.timedOutQueued));
    set("abandoned", String(t.abandoned));
    set("retries", String(t.retries));
    for (const name of Object.keys(CHARTS)) drawChart(name, pool.series, snap.uptimeSeconds);
    lastSnapshot = snap;
    drawWorkers(pool.workers, snap.now);
    document.title = "POTHEAD · " + s.queued + " queued · " + s.busy + "/" + s.slots + " busy";
  }

  function setMode(mode) {
    const el = document.getElementById("mode");
    el.dataset.mode = mode;
    el.textContent = mode;
  }

  async function pollOnce() {
    try {
      const res = await fetch("status", { cache: "no-store" });
      if (!res.ok) throw new Error("status " + res.status);
      update(await res.json());
      setMode("polling");
    } catch {
      setMode("offline");
    }
  }
  function startPolling() {
    if (pollTimer !== null) return;
    pollOnce();
    pollTimer = setInterval(pollOnce, POLL_MS);
  }
  function stopPolling() {
    if (pollTimer !== null) clearInterval(pollTimer);
    pollTimer = null;
  }

  function startEvents() {
    retryTimer = null;
    if (typeof EventSource !== "function") return startPolling();
    source = new EventSource("events");
    source.onmessage = (e) => {
      stopPolling();
      setMode("live");
      update(JSON.parse(e.data));
    };
    source.onerror = () => {
      // Fall back to polling, and try the event stream again later.
      source.close();
      source = null;
      startPolling();
      if (retryTimer === null) retryTimer = setTimeout(startEvents, 15000);
    };
  }

  document.getElementById("pool").addEventListener("change", (e) => {
    selectedPool = e.target.value;
    if (lastSnapshot !== null) update(lastSnapshot);
  });
  let resizeTimer = null;
  addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => { if (lastSnapshot !== null) update(lastSnapshot); }, 100);
  });
  drawLegends();
  startEvents();
})();
</script>
</body>
</html>
`;
