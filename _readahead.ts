/**
 * Reading a body ahead of a slow reader, so the peer that sends it can
 * finish (and its connection carry the next message) long before the reader
 * has taken it all: in memory up to a limit per body and a budget shared by
 * all bodies, then, if a directory is given, into a temporary file.
 *
 * @module
 */

import { SpillFile } from "./_spill.ts";

/**
 * Memory that read-ahead bodies share: `held` bytes read off connections
 * and not yet taken by their readers. A body stops reading ahead in memory
 * once `held` reaches `max`.
 */
export interface ReadAheadBudget {
  /** Most bytes held by all bodies together. */
  max: number;
  /** Bytes held now. */
  held: number;
}

/** Where bodies go on past their memory (see {@linkcode ReadAheadOptions}). */
export interface SpillOptions {
  /** Directory for the temporary files (unlinked as soon as they are open). */
  dir: string;
  /** Most bytes one body may have waiting on disk. */
  max: number;
  /**
   * Most bytes waiting on disk over all bodies that share this object;
   * unset: no limit but `max` per body.
   */
  total?: number;
  /** Bytes waiting on disk over all bodies that share this object, now. */
  held: number;
  /**
   * Called when a file cannot be made or written; that body goes on in
   * memory or at its reader's pace. No body tries again for `retryAfter`
   * ms.
   */
  onError?: (error: unknown) => void;
  /** `performance.now()` of the last failure (kept up to date here). */
  failedAt?: number;
}

/** How far a body is read ahead of its reader. */
export interface ReadAheadOptions {
  /** Bytes held in memory for one body, at most. */
  limit: number;
  /** Memory shared by all bodies. */
  budget: ReadAheadBudget;
  /** Where to go on once the memory is used; unset: nowhere. */
  spill?: SpillOptions;
  /**
   * Cuts every body still held when it aborts: the reader gets the reason
   * as an error, and what was held is given back.
   */
  signal?: AbortSignal;
}

/**
 * What the maker of a read-ahead stream may ask of it besides its bytes.
 */
export interface ReadAheadControl {
  /**
   * Called whenever reading ahead stops: at the end, on an error, or when
   * the memory and disk allowed are used.
   */
  onPause?: () => void;
  /**
   * Set by {@linkcode readAheadStream}: the whole body as one array, if it
   * has been read to its end, is all in memory and nothing of it has been
   * taken; the stream is then spent and its memory given back. Otherwise
   * null, and the stream is as it was.
   */
  takeWhole?: () => Uint8Array | null;
}

const MAX_CHUNK = 64 * 1024;
// Chunks smaller than this are gathered into blocks of BLOCK bytes (see
// keep in readAheadStream).
const SMALL_CHUNK = 4 * 1024;
const BLOCK = 16 * 1024;
// After a spill file could not be made or written, bodies stay in memory
// for this long before trying the disk again.
const RETRY_SPILL_AFTER = 5000;

// Bytes waiting in the spill file, in order among the memory chunks.
interface Spilled {
  bytes: number;
}

/**
 * A stream of the chunks `read` returns (null at the end), read ahead of
 * the stream's reader as `options` allow. `read` settles the body itself
 * (its onDone) at the end or on an error; `cancel` is called when the
 * reader cancels. The stream's own queue stays empty (highWaterMark 0):
 * every byte held is counted in the budget and released when the reader
 * takes it. `control`, if given, is told when reading ahead stops and gets
 * a way to take the whole body at once.
 */
export function readAheadStream(
  read: () => Promise<Uint8Array | null>,
  options: ReadAheadOptions,
  cancel: (reason: unknown) => void,
  control?: ReadAheadControl,
): ReadableStream<Uint8Array> {
  const { limit, budget, spill } = options;
  let queue: (Uint8Array | Spilled)[] = [];
  let first = 0; // index of the oldest entry
  let inMemory = 0;
  let onDisk = 0;
  let file: SpillFile | null = null;
  let noDisk = spill === undefined;
  let ended = false;
  let failure: { error: unknown } | null = null;
  // The reader cancelled, or the disk lost part of the body: nothing more
  // is kept.
  let dropped = false;
  let inFlight: Promise<void> | null = null;
  // Listens to options.signal while the body is held (see start()).
  const signal = options.signal;
  let cut: (() => void) | undefined;
  const unwatch = () => {
    if (cut !== undefined) signal!.removeEventListener("abort", cut);
  };

  const memoryRoom = () => inMemory < limit && budget.held < budget.max;
  const diskRoom = () =>
    !noDisk && onDisk < spill!.max &&
    spill!.held < (spill!.total ?? Infinity) &&
    !(spill!.failedAt !== undefined &&
      performance.now() - spill!.failedAt < RETRY_SPILL_AFTER);
  // Small chunks are copied into a shared block, one after another: a peer
  // can send a body one byte per chunk, and an array each would hold some
  // hundred bytes for every byte counted. The last entry grows in place
  // while it ends where the block's bytes end (the reader has not taken it).
  let block: Uint8Array | null = null;
  let blockUsed = 0;
  const keep = (chunk: Uint8Array) => {
    inMemory += chunk.length;
    budget.held += chunk.length;
    if (chunk.length >= SMALL_CHUNK) {
      // A read may be a view of a larger array: keep a copy, so what is
      // held is what is counted.
      if (chunk.byteLength * 2 < chunk.buffer.byteLength) chunk = chunk.slice();
      queue.push(chunk);
      return;
    }
    if (block === null || blockUsed + chunk.length > BLOCK) {
      block = new Uint8Array(BLOCK);
      blockUsed = 0;
    }
    const from = blockUsed;
    block.set(chunk, from);
    blockUsed += chunk.length;
    const last = queue.length > first ? queue[queue.length - 1] : undefined;
    if (
      last instanceof Uint8Array && last.buffer === block.buffer &&
      last.byteOffset + last.length === from
    ) {
      queue[queue.length - 1] = block.subarray(last.byteOffset, blockUsed);
    } else {
      queue.push(block.subarray(from, blockUsed));
    }
  };
  const spillFailed = (error: unknown) => {
    noDisk = true;
    spill!.failedAt = performance.now();
    spill!.onError?.(error);
  };
  // Puts a chunk read ahead in the file; false if it cannot.
  const toDisk = async (chunk: Uint8Array): Promise<boolean> => {
    try {
      if (file === null) {
        const opened = await SpillFile.open(spill!.dir, {
          segment: segmentFor(spill!.max),
        });
        if (dropped) {
          opened.close();
          return true;
        }
        file = opened;
      }
      await file.append(chunk);
    } catch (error) {
      if (!dropped) spillFailed(error);
      return false;
    }
    if (dropped) return true;
    const last = queue.length > first ? queue[queue.length - 1] : undefined;
    if (last !== undefined && !(last instanceof Uint8Array)) {
      last.bytes += chunk.length;
    } else {
      queue.push({ bytes: chunk.length });
    }
    onDisk += chunk.length;
    spill!.held += chunk.length;
    return true;
  };
  // Reads one chunk off the connection into the queue: in memory when
  // `ahead` is false (the reader waits for it) or there is room, else on
  // disk.
  const readOne = (ahead: boolean): Promise<void> => {
    if (inFlight !== null) return inFlight;
    inFlight = (async () => {
      try {
        const chunk = await read();
        if (chunk === null) {
          ended = true;
        } else if (!dropped) {
          if (ahead && !memoryRoom() && diskRoom()) {
            if (await toDisk(chunk)) return;
          }
          if (!dropped) keep(chunk);
        }
      } catch (error) {
        failure = { error };
      } finally {
        inFlight = null;
      }
    })();
    return inFlight;
  };
  const readAhead = () => {
    if (inFlight !== null) return;
    if (
      !ended && failure === null && !dropped && (memoryRoom() || diskRoom())
    ) {
      readOne(true).then(readAhead);
    } else control?.onPause?.();
  };
  // Gives back all that is held; the body keeps nothing from here on.
  const release = () => {
    unwatch();
    budget.held -= inMemory;
    inMemory = 0;
    if (spill !== undefined) spill.held -= onDisk;
    onDisk = 0;
    file?.close();
    queue = [];
    first = 0;
  };
  // The oldest entry as bytes for the reader.
  const take = async (): Promise<Uint8Array> => {
    const entry = queue[first];
    if (entry instanceof Uint8Array) {
      queue[first++] = EMPTY;
      inMemory -= entry.length;
      budget.held -= entry.length;
      return entry;
    }
    const n = Math.min(entry.bytes, MAX_CHUNK);
    const chunk = await file!.take(n);
    // Cancelled meanwhile: release() gave back all it held.
    if (dropped) return chunk;
    entry.bytes -= n;
    onDisk -= n;
    spill!.held -= n;
    if (entry.bytes === 0) queue[first++] = EMPTY;
    return chunk;
  };
  let pulled = false;
  if (control !== undefined) {
    control.takeWhole = () => {
      if (
        pulled || dropped || !ended || failure !== null || onDisk > 0 ||
        inFlight !== null
      ) return null;
      const out = new Uint8Array(inMemory);
      let at = 0;
      for (let i = first; i < queue.length; i++) {
        out.set(queue[i] as Uint8Array, at);
        at += (queue[i] as Uint8Array).length;
      }
      dropped = true;
      release();
      return out;
    };
  }
  readAhead();
  return new ReadableStream<Uint8Array>({
    start(controller) {
      if (signal === undefined) return;
      cut = () => {
        if (dropped) return;
        dropped = true;
        release();
        cancel(signal.reason);
        controller.error(signal.reason);
      };
      if (signal.aborted) cut();
      else signal.addEventListener("abort", cut, { once: true });
    },
    async pull(controller) {
      pulled = true;
      while (first === queue.length && !ended && failure === null) {
        await readOne(false);
      }
      if (first < queue.length) {
        let chunk;
        try {
          chunk = await take();
          if (dropped) return;
        } catch (error) {
          if (dropped) return;
          // The disk lost part of the body: the reader must not see an end,
          // and the rest is not worth reading.
          dropped = true;
          release();
          cancel(error);
          controller.error(error);
          return;
        }
        if (first === queue.length) {
          queue = [];
          first = 0;
        }
        controller.enqueue(chunk);
        readAhead();
      } else if (failure !== null) {
        file?.close();
        unwatch();
        controller.error(failure.error);
      } else {
        file?.close();
        unwatch();
        controller.close();
      }
    },
    cancel(reason) {
      dropped = true;
      release();
      cancel(reason);
    },
  }, { highWaterMark: 0 });
}

const EMPTY = new Uint8Array(0);

// Spill segments are a quarter of what one body may keep on disk, within
// 64 KiB and 4 MiB: the disk then holds at most what waits plus one
// segment, without a new file every few reads.
function segmentFor(max: number): number {
  return Math.min(4 * 1024 * 1024, Math.max(64 * 1024, Math.floor(max / 4)));
}
