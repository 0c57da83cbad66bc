/**
 * The trivial handler for the throughput and latency benchmarks: "hello".
 *
 * @module
 */

const HELLO = new TextEncoder().encode("hello");

/** Answers every request with the five bytes `hello`. */
export default function handler(_req: Request): Response {
  return new Response(HELLO, { headers: { "content-type": "text/plain" } });
}
