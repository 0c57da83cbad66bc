/**
 * A small SVG line-chart writer for the benchmark results: one or more
 * panels in a grid, one line per series, a shared legend, optional log
 * scale on y. No dependencies; the output is a standalone SVG document.
 *
 * @module
 */

/** One line on a panel. */
export interface Series {
  /** Legend text; series with the same name share a legend entry. */
  name: string;
  /** Stroke colour (any SVG colour). */
  color: string;
  /** SVG `stroke-dasharray`, e.g. `"6 4"`, for a dashed line. */
  dash?: string;
  /** Stroke width. @default {2} */
  width?: number;
  /** Points as [x, y]; non-finite or (on a log axis) non-positive y are skipped. */
  points: [number, number][];
}

/** One chart in the grid. */
export interface Panel {
  /** Title above the panel. */
  title: string;
  /** The lines. */
  series: Series[];
}

/** Options for {@linkcode lineChart}. */
export interface ChartOptions {
  /** Title at the top of the document. */
  title: string;
  /** Smaller line under the title. */
  subtitle?: string;
  /** Label of every x axis. */
  xLabel: string;
  /** Label of every y axis. */
  yLabel: string;
  /** The panels, filled row by row. */
  panels: Panel[];
  /** Panels per row. @default {2} */
  columns?: number;
  /** Logarithmic y axis. @default {false} */
  logY?: boolean;
  /** Where to put x ticks (default: every x that occurs). */
  xTicks?: number[];
  /** Formats an x tick. @default {String} */
  formatX?: (x: number) => string;
}

const PANEL_W = 400;
const PANEL_H = 280;
const MIN_WIDTH = 820;
const LEGEND_ROW = 18;
const MARGIN = { left: 58, right: 14, top: 30, bottom: 44 };

/** Escapes text for SVG content and attribute values. */
export function escapeXml(text: string): string {
  return text.replace(
    /[<>&"']/g,
    (c) =>
      ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#39;" })[
        c
      ]!,
  );
}

function fmt(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/** Tick values 1, 2, 5 × 10^k covering [lo, hi] (lo > 0). */
export function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  const first = Math.floor(Math.log10(lo));
  const last = Math.ceil(Math.log10(hi));
  for (let e = first; e <= last && e - first < 12; e++) {
    for (const m of [1, 2, 5]) {
      const v = m * 10 ** e;
      if (v >= lo * 0.999 && v <= hi * 1.001) {
        ticks.push(Number(v.toPrecision(3)));
      }
    }
  }
  return ticks;
}

/** About five round tick values covering [lo, hi]. */
export function linearTicks(lo: number, hi: number): number[] {
  const span = hi - lo || 1;
  const raw = span / 5;
  const step = [1, 2, 5, 10].map((m) => m * 10 ** Math.floor(Math.log10(raw)))
    .find((s) => s >= raw)!;
  const ticks: number[] = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
    ticks.push(Number(v.toPrecision(6)));
    if (ticks.length > 20) break;
  }
  return ticks;
}

function tickLabel(v: number): string {
  if (v >= 1000) return `${fmt(v / 1000)}k`;
  if (v >= 1) return fmt(v);
  return String(Number(v.toPrecision(2)));
}

function panelSvg(
  panel: Panel,
  options: ChartOptions,
  panelW: number,
): string {
  const logY = options.logY ?? false;
  const formatX = options.formatX ?? String;
  const ok = (p: [number, number]) =>
    Number.isFinite(p[0]) && Number.isFinite(p[1]) && (!logY || p[1] > 0);
  const points = panel.series.flatMap((s) => s.points.filter(ok));
  const plotW = panelW - MARGIN.left - MARGIN.right;
  const plotH = PANEL_H - MARGIN.top - MARGIN.bottom;
  const out: string[] = [
    `<text x="${panelW / 2}" y="18" text-anchor="middle" font-weight="bold">${
      escapeXml(panel.title)
    }</text>`,
    `<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotW}" height="${plotH}" fill="#fff" stroke="#999"/>`,
  ];
  if (points.length === 0) {
    out.push(
      `<text x="${panelW / 2}" y="${
        PANEL_H / 2
      }" text-anchor="middle" fill="#999">no data</text>`,
    );
    return out.join("\n");
  }
  const xs = points.map((p) => p[0]);
  const ys = points.map((p) => p[1]);
  let x0 = Math.min(...xs), x1 = Math.max(...xs);
  const xPad = (x1 - x0 || 1) * 0.05;
  x0 -= xPad;
  x1 += xPad;
  let y0 = Math.min(...ys), y1 = Math.max(...ys);
  let yTicks: number[];
  if (logY) {
    // Quarter-decade bounds keep the lines off the frame.
    y0 = 10 ** (Math.floor(Math.log10(y0) * 4) / 4);
    y1 = 10 ** (Math.ceil(Math.log10(y1) * 4) / 4);
    if (y1 <= y0) y1 = y0 * 10;
    yTicks = logTicks(y0, y1);
  } else {
    y0 = Math.min(0, y0);
    y1 = y1 > y0 ? y1 * 1.05 : y0 + 1;
    yTicks = linearTicks(y0, y1);
  }
  const sx = (x: number) => MARGIN.left + ((x - x0) / (x1 - x0)) * plotW;
  const sy = (y: number) =>
    MARGIN.top + plotH -
    (logY
      ? (Math.log(y / y0) / Math.log(y1 / y0)) * plotH
      : ((y - y0) / (y1 - y0)) * plotH);
  for (const t of yTicks) {
    const y = sy(t).toFixed(1);
    out.push(
      `<line x1="${MARGIN.left}" x2="${
        MARGIN.left + plotW
      }" y1="${y}" y2="${y}" stroke="#eee"/>`,
      `<text x="${
        MARGIN.left - 6
      }" y="${y}" text-anchor="end" dominant-baseline="middle">${
        tickLabel(t)
      }</text>`,
    );
  }
  const xTicks = options.xTicks ?? [...new Set(xs)].sort((a, b) => a - b);
  for (const t of xTicks) {
    const x = sx(t).toFixed(1);
    out.push(
      `<line x1="${x}" x2="${x}" y1="${MARGIN.top}" y2="${
        MARGIN.top + plotH
      }" stroke="#eee"/>`,
      `<text x="${x}" y="${MARGIN.top + plotH + 16}" text-anchor="middle">${
        escapeXml(formatX(t))
      }</text>`,
    );
  }
  out.push(
    `<text x="${MARGIN.left + plotW / 2}" y="${
      PANEL_H - 8
    }" text-anchor="middle" fill="#555">${escapeXml(options.xLabel)}</text>`,
    `<text transform="translate(14 ${
      MARGIN.top + plotH / 2
    }) rotate(-90)" text-anchor="middle" fill="#555">${
      escapeXml(options.yLabel)
    }</text>`,
  );
  for (const s of panel.series) {
    const pts = s.points.filter(ok).sort((a, b) => a[0] - b[0]);
    if (pts.length === 0) continue;
    const path = pts.map((p, i) =>
      `${i ? "L" : "M"}${sx(p[0]).toFixed(1)} ${sy(p[1]).toFixed(1)}`
    ).join(" ");
    out.push(
      `<path d="${path}" fill="none" stroke="${
        escapeXml(s.color)
      }" stroke-width="${s.width ?? 2}"${
        s.dash ? ` stroke-dasharray="${escapeXml(s.dash)}"` : ""
      }/>`,
    );
    for (const p of pts) {
      out.push(
        `<circle cx="${sx(p[0]).toFixed(1)}" cy="${
          sy(p[1]).toFixed(1)
        }" r="3" fill="${escapeXml(s.color)}"><title>${
          escapeXml(`${s.name}: ${formatX(p[0])} → ${p[1].toFixed(1)}`)
        }</title></circle>`,
      );
    }
  }
  return out.join("\n");
}

/**
 * Renders a grid of line charts as a standalone SVG document.
 *
 * @param options title, axis labels, panels and scale.
 * @returns the SVG text.
 */
export function lineChart(options: ChartOptions): string {
  const columns = Math.max(
    1,
    Math.min(options.columns ?? 2, options.panels.length),
  );
  const rows = Math.max(1, Math.ceil(options.panels.length / columns));
  const legend = new Map<string, Series>();
  for (const panel of options.panels) {
    for (const s of panel.series) {
      if (!legend.has(s.name)) legend.set(s.name, s);
    }
  }
  const width = Math.max(columns * PANEL_W, MIN_WIDTH);
  const panelW = width / columns;
  // Legend entries flow left to right and wrap.
  const entries: { s: Series; x: number; row: number }[] = [];
  let lx = 16, row = 0;
  for (const s of legend.values()) {
    const w = 44 + s.name.length * 7;
    if (lx + w > width - 8 && lx > 16) lx = 16, row++;
    entries.push({ s, x: lx, row });
    lx += w;
  }
  const top = options.subtitle ? 62 : 44;
  const header = top + (row + 1) * LEGEND_ROW + 4;
  const height = header + rows * PANEL_H + 8;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fafafa"/>`,
    `<text x="${
      width / 2
    }" y="22" text-anchor="middle" font-size="16" font-weight="bold">${
      escapeXml(options.title)
    }</text>`,
  ];
  if (options.subtitle) {
    out.push(
      `<text x="${width / 2}" y="40" text-anchor="middle" fill="#555">${
        escapeXml(options.subtitle)
      }</text>`,
    );
  }
  for (const { s, x, row } of entries) {
    const ly = top + row * LEGEND_ROW + 6;
    out.push(
      `<line x1="${x}" x2="${x + 24}" y1="${ly}" y2="${ly}" stroke="${
        escapeXml(s.color)
      }" stroke-width="${s.width ?? 2}"${
        s.dash ? ` stroke-dasharray="${escapeXml(s.dash)}"` : ""
      }/>`,
      `<text x="${x + 30}" y="${ly}" dominant-baseline="middle">${
        escapeXml(s.name)
      }</text>`,
    );
  }
  options.panels.forEach((panel, i) => {
    const x = (i % columns) * panelW;
    const y = header + Math.floor(i / columns) * PANEL_H;
    out.push(
      `<g transform="translate(${x} ${y})">`,
      panelSvg(panel, options, panelW),
      "</g>",
    );
  });
  out.push("</svg>", "");
  return out.join("\n");
}
