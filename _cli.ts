/**
 * Helpers shared by the hub and worker command lines: option values from
 * flags or `POTHEAD_*` environment variables, durations, and the version.
 *
 * @module
 */

import config from "./deno.json" with { type: "json" };
import { MAX_TIMER_MS } from "./_queue.ts";

/** The package version, from deno.json. */
export const VERSION: string = config.version;

/** A CLI usage error: printed without a stack trace, exit code 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * The flag's value if given, else the environment variable's, else
 * undefined. Reading the environment needs `--allow-env`; without it the
 * variable counts as unset.
 */
export function flagOrEnv(
  flag: string | undefined,
  env: string,
): string | undefined {
  if (flag !== undefined) return flag;
  try {
    return Deno.env.get(env);
  } catch {
    return undefined;
  }
}

/**
 * Whether a boolean flag is on: given, or its environment variable is `1`,
 * `true` or `yes` (`0`, `false`, `no` or empty: off; anything else is a
 * usage error, so that a typo does not turn a setting off unnoticed).
 */
export function switchOn(flag: unknown, env: string): boolean {
  if (flag === true) return true;
  const value = (flagOrEnv(undefined, env) ?? "").trim();
  if (/^(1|true|yes)$/i.test(value)) return true;
  if (/^(0|false|no|)$/i.test(value)) return false;
  throw new UsageError(
    `Invalid ${env}: expected 1, true or yes (on), or 0, false, no or empty (off), got "${value}"`,
  );
}

/**
 * The name to give in an error about an option: the flag if it was given,
 * else its environment variable (where the value came from).
 */
export function sourceOf(
  given: unknown,
  flag: string,
  env: string,
): string {
  return given !== undefined ? `--${flag}` : env;
}

/** Parses a non-negative integer option, naming the option in the error. */
export function parseInteger(
  text: string | undefined,
  name: string,
  fallback: number,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number {
  if (text === undefined) return fallback;
  if (!/^[0-9]+$/.test(text.trim())) {
    throw new UsageError(`Invalid ${name}: expected an integer, got "${text}"`);
  }
  const n = Number(text.trim());
  if (n < min || n > max) {
    throw new UsageError(
      `Invalid ${name}: ${n} is outside ${min}..${max}`,
    );
  }
  return n;
}

/**
 * Parses a duration such as `30s`, `500ms`, `2m` or `1h` into milliseconds;
 * a bare number is seconds. `0` means "no limit" where an option allows it.
 */
export function parseDuration(
  text: string | undefined,
  name: string,
  fallback: number,
): number {
  if (text === undefined) return fallback;
  const m = /^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (m === null) {
    throw new UsageError(
      `Invalid ${name}: expected a duration like 30s or 500ms, got "${text}"`,
    );
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] ?? "s"]!;
  const ms = Math.round(Number(m[1]) * unit);
  if (ms > MAX_TIMER_MS) {
    throw new UsageError(
      `Invalid ${name}: "${text}" is longer than the longest timer (${MAX_TIMER_MS} ms, about 24.8 days)`,
    );
  }
  if (ms === 0 && Number(m[1]) > 0) {
    throw new UsageError(
      `Invalid ${name}: "${text}" is shorter than a millisecond (0 means no limit)`,
    );
  }
  return ms;
}

/** Parses `host:port` (IPv6 in brackets), naming the option in the error. */
export function parseHostPort(
  text: string,
  name: string,
): { hostname: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):([0-9]{1,5})$/.exec(text.trim());
  if (m === null) {
    throw new UsageError(
      `Invalid ${name}: expected host:port, got "${text}"`,
    );
  }
  const port = Number(m[3]);
  if (port < 1 || port > 65535) {
    throw new UsageError(`Invalid ${name}: port ${port} is out of range`);
  }
  return { hostname: m[1] ?? (m[2] || "127.0.0.1"), port };
}

/** Formats a listener address for the "Listening on" line. */
export function formatAddr(
  scheme: string,
  addr: { hostname: string; port: number },
): string {
  const host = addr.hostname.includes(":")
    ? `[${addr.hostname}]`
    : addr.hostname;
  return `${scheme}://${host}:${addr.port}/`;
}

/** Reads a file named by an option, naming the option's purpose on error. */
export function readText(path: string, what: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch (error) {
    throw new UsageError(
      `Cannot read ${what} "${path}": ${(error as Error).message}`,
    );
  }
}
