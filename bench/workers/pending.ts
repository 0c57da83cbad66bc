/**
 * A handler whose responses never come (the memory baseline: what holding a
 * request costs `Deno.serve` itself). `GET /__count` answers with how many
 * requests are pending.
 *
 * @module
 */

let pending = 0;

/** Never answers, except `/__count`. */
export default function handler(req: Request): Promise<Response> | Response {
  if (new URL(req.url).pathname === "/__count") {
    return new Response(String(pending));
  }
  pending++;
  return new Promise<Response>(() => {});
}
