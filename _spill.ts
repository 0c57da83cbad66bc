/**
 * A body's overflow on disk: temporary files that are unlinked as soon as
 * they are open (nothing is left behind, whatever happens to the process),
 * written at their end and read from their start, one operation at a time.
 *
 * @module
 */

/** Options for {@linkcode SpillFile.open}. */
export interface SpillFileOptions {
  /**
   * Bytes per segment file. A segment is closed (its space freed) once its
   * reader has taken all of it, so the disk holds what waits plus at most
   * one segment. Default 1 MiB.
   */
  segment?: number;
}

const DEFAULT_SEGMENT = 1024 * 1024;

// One temporary file: appended to until it holds `segment` bytes.
interface Segment {
  writer: Deno.FsFile;
  reader: Deno.FsFile;
  written: number;
  read: number;
}

/**
 * An open byte FIFO on disk, in segment files made and unlinked as it
 * grows: a reader that stays a little behind a faster writer does not leave
 * what it has taken on disk.
 */
export class SpillFile {
  #dir: string;
  #size: number;
  // Oldest first; appends go to the last.
  #segments: Segment[];
  // Operations run one after another: a read never sees a write half done,
  // and the rewind (see take) never races an append.
  #chain: Promise<unknown> = Promise.resolve();
  #written = 0;
  #read = 0;
  #closed = false;

  private constructor(dir: string, size: number, first: Segment) {
    this.#dir = dir;
    this.#size = size;
    this.#segments = [first];
  }

  /**
   * Makes the first segment in `dir` and unlinks it.
   *
   * @throws whatever `Deno.makeTempFile` or `Deno.open` throws (no such
   *   directory, no permission).
   */
  static async open(
    dir: string,
    options: SpillFileOptions = {},
  ): Promise<SpillFile> {
    const size = options.segment ?? DEFAULT_SEGMENT;
    if (!Number.isSafeInteger(size) || size < 1) {
      throw new RangeError(
        `Invalid spill segment size ${size}: expected a positive integer`,
      );
    }
    return new SpillFile(dir, size, await openSegment(dir));
  }

  /**
   * Bytes in the files now, as the file system reports their sizes: what
   * waits, and what was taken of segments still open.
   */
  diskUsage(): Promise<number> {
    return this.#run(async () => {
      let n = 0;
      for (const s of this.#segments) n += (await s.writer.stat()).size;
      return n;
    });
  }

  /** Appends all of `chunk`. */
  append(chunk: Uint8Array): Promise<void> {
    return this.#run(async () => {
      let at = 0;
      while (at < chunk.length) {
        let last = this.#segments[this.#segments.length - 1];
        if (last.written >= this.#size) {
          last = await openSegment(this.#dir);
          if (this.#closed) {
            closeSegment(last);
            throw new Deno.errors.BadResource("Spill file is closed");
          }
          this.#segments.push(last);
        }
        const end = Math.min(chunk.length, at + this.#size - last.written);
        const n = await last.writer.write(chunk.subarray(at, end));
        last.written += n;
        this.#written += n;
        at += n;
      }
    });
  }

  /**
   * Reads the oldest `length` bytes not read yet (at most what was
   * appended). A segment read to its end is closed, and the last one is
   * emptied once everything appended has been read, so the disk never holds
   * more than what waits and one segment.
   */
  take(length: number): Promise<Uint8Array> {
    return this.#run(async () => {
      const n = Math.min(length, this.#written - this.#read);
      const out = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const seg = this.#segments[0];
        const want = Math.min(n - at, seg.written - seg.read);
        const got = want === 0
          ? null
          : await seg.reader.read(out.subarray(at, at + want));
        if (got === null) {
          throw new Deno.errors.UnexpectedEof(
            `Cannot read spilled body: file ended after ${
              this.#read + at
            } of ${this.#written} bytes`,
          );
        }
        seg.read += got;
        at += got;
        if (seg.read === seg.written && this.#segments.length > 1) {
          this.#segments.shift();
          closeSegment(seg);
        }
      }
      this.#read += n;
      const last = this.#segments[0];
      if (this.#segments.length === 1 && last.read === last.written) {
        await last.writer.truncate(0);
        await last.writer.seek(0, Deno.SeekMode.Start);
        await last.reader.seek(0, Deno.SeekMode.Start);
        last.read = last.written = 0;
      }
      return out;
    });
  }

  /** Closes the files (their space is freed); operations still queued fail. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    // The segments stay listed: an operation in progress fails on its
    // closed file.
    for (const s of this.#segments) closeSegment(s);
  }

  #run<T>(op: () => Promise<T>): Promise<T> {
    const next = this.#chain.then(() => {
      if (this.#closed) {
        throw new Deno.errors.BadResource("Spill file is closed");
      }
      return op();
    });
    this.#chain = next.catch(() => {});
    return next;
  }
}

async function openSegment(dir: string): Promise<Segment> {
  const path = await Deno.makeTempFile({ dir, prefix: "pothead-body-" });
  let writer: Deno.FsFile | undefined;
  try {
    writer = await Deno.open(path, { write: true });
    const reader = await Deno.open(path, { read: true });
    return { writer, reader, written: 0, read: 0 };
  } catch (error) {
    writer?.close();
    throw error;
  } finally {
    await Deno.remove(path).catch(() => {});
  }
}

function closeSegment(s: Segment): void {
  for (const f of [s.writer, s.reader]) {
    try {
      f.close();
    } catch {
      // closed already
    }
  }
}
