// Drives Debian's chromium with playwright-core for tests/status_page_test.ts.
//
// Protocol: one JSON command per line on stdin, one JSON reply per line on
// stdout ({ ok: true, ... } or { ok: false, error }). Commands:
//   { cmd: "open", url, noEventSource? }   open a page (optionally without
//                                           EventSource, to force polling)
//   { cmd: "read" }                         displayed numbers, mode, charts
//   { cmd: "waitFor", metric, value }       until [data-metric] shows value
//   { cmd: "waitForChart", chart, value }   until the chart's last point is value
//   { cmd: "screenshot", path }
//   { cmd: "websocket", url, send, close }  open a WebSocket from a blank
//                                           page, send each string of
//                                           `send`, collect as many
//                                           replies, close with `close`
//                                           (a code); replies, protocol,
//                                           extensions, the close event
//   { cmd: "quit" }                         close the browser and exit
// Runs under Node (not Deno) because playwright-core is installed from npm
// into node_modules with `npm install --no-save playwright-core`.

import { mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

// Loaded through Node's resolver so that `deno check tests/` (which also
// reads this file) does not try to resolve the npm package itself.
const { chromium } = createRequire(import.meta.url)("playwright-core");

const EXECUTABLE = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
const WAIT_MS = Number(process.env.STATUS_PAGE_WAIT_MS ?? 30000);

const userDataDir = mkdtempSync(join(tmpdir(), "pothead-chromium-"));
let context = null;
let page = null;
const errors = [];

function reply(message) {
  process.stdout.write(JSON.stringify(message) + "\n");
}

async function read() {
  return await page.evaluate(() => {
    const values = {};
    for (const el of document.querySelectorAll("[data-metric]")) {
      values[el.dataset.metric] = el.textContent;
    }
    const charts = {};
    for (const svg of document.querySelectorAll("svg[id^=chart-]")) {
      charts[svg.id.slice(6)] = {
        last: svg.dataset.last ?? null,
        paths: svg.querySelectorAll("path").length,
      };
    }
    const workers = [...document.querySelectorAll("#workers tr")].map((tr) =>
      [...tr.children].map((td) => td.textContent)
    );
    return {
      values,
      charts,
      workers,
      mode: document.getElementById("mode").dataset.mode,
      title: document.title,
    };
  });
}

async function launch() {
  if (context === null) {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: EXECUTABLE,
      headless: true,
      viewport: { width: 1280, height: 900 },
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
  }
}

async function handle(command) {
  switch (command.cmd) {
    case "open": {
      await launch();
      if (page !== null) await page.close();
      page = await context.newPage();
      page.on("pageerror", (e) => errors.push(`pageerror: ${e.message}`));
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(`console: ${m.text()}`);
      });
      if (command.noEventSource) {
        await page.addInitScript(() => {
          delete globalThis.EventSource;
        });
      }
      await page.goto(command.url);
      await page.waitForFunction(
        () =>
          document.querySelector('[data-metric="queued"]').textContent !== "–",
        null,
        { timeout: WAIT_MS },
      );
      return await read();
    }
    case "read":
      return await read();
    case "waitFor":
      await page.waitForFunction(
        ([metric, value]) =>
          document.querySelector(`[data-metric="${metric}"]`)?.textContent ===
            value,
        [command.metric, command.value],
        { timeout: WAIT_MS },
      );
      return await read();
    case "waitForChart":
      await page.waitForFunction(
        ([chart, value]) =>
          document.getElementById(`chart-${chart}`)?.dataset.last === value,
        [command.chart, command.value],
        { timeout: WAIT_MS },
      );
      return await read();
    case "websocket": {
      await launch();
      const blank = await context.newPage();
      try {
        return await blank.evaluate(
          ({ url, send, close }) =>
            new Promise((resolve, reject) => {
              const ws = new WebSocket(url, ["chat"]);
              ws.binaryType = "arraybuffer";
              const replies = [];
              const out = {};
              ws.onerror = () => reject(new Error("WebSocket error"));
              ws.onopen = () => {
                out.protocol = ws.protocol;
                out.extensions = ws.extensions;
                for (const m of send) ws.send(m);
                ws.send(new Uint8Array([1, 2, 3]));
              };
              ws.onmessage = (e) => {
                replies.push(
                  typeof e.data === "string"
                    ? e.data
                    : [...new Uint8Array(e.data)],
                );
                if (replies.length === send.length + 1) ws.close(close, "bye");
              };
              ws.onclose = (e) =>
                resolve({
                  ...out,
                  replies,
                  code: e.code,
                  reason: e.reason,
                  wasClean: e.wasClean,
                });
            }),
          command,
        );
      } finally {
        await blank.close();
      }
    }
    case "screenshot":
      await page.screenshot({ path: command.path, fullPage: true });
      return {};
    default:
      throw new Error(`unknown command "${command.cmd}"`);
  }
}

async function quit() {
  try {
    if (context !== null) await context.close();
  } finally {
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (line.trim() === "") continue;
  let command;
  try {
    command = JSON.parse(line);
  } catch {
    reply({ ok: false, error: `not JSON: ${line}` });
    continue;
  }
  if (command.cmd === "quit") break;
  try {
    const result = await handle(command);
    reply({ ok: true, ...result, errors: errors.splice(0) });
  } catch (error) {
    reply({ ok: false, error: String(error?.stack ?? error) });
  }
}
await quit();
reply({ ok: true, bye: true });
