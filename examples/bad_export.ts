/**
 * A handler module that is NOT valid for POTHEAD or `deno serve`: it exports
 * `fetch` by name but has no default export. The worker must refuse it with
 * an error naming what it found (used by tests/cli_test.ts).
 *
 * @module
 */

/** A handler, but exported by name, which neither runner looks at. */
export function fetch(_req: Request): Response {
  return new Response("never served\n");
}
