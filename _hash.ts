/**
 * Small non-cryptographic hashes for worker affinity's rendezvous hashing
 * (see the hub's `affinityBy`): a key and a worker id are hashed once each,
 * and each pair is scored by mixing the two.
 *
 * @module
 */

/**
 * FNV-1a over a string's UTF-16 code units, as an unsigned 32-bit integer,
 * finished with {@linkcode mix32} so that near-identical strings ("m1",
 * "m2") land far apart.
 */
export function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return mix32(h);
}

/**
 * MurmurHash3's 32-bit finalizer: every input bit flips about half of the
 * output bits. Unsigned result.
 */
export function mix32(value: number): number {
  let h = value >>> 0;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
