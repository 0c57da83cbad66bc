/**
 * A body's overflow on disk: a temporary file that is unlinked as soon as it
 * is open (nothing is left behind, whatever happens to the process), written
 * at its end and read from its start, one operation at a time.
 *
 * @module
 */

/** An open, already unlinked temporary file used as a byte FIFO. */
export class SpillFile {
  #writer: Deno.FsFile;
  #reader: Deno.FsFile;
  // Operations run one after another: a read never sees a write half done,
  // and the rewind (see take) never races an append.
  #chain: Promise<unknown> = Promise.resolve();
  #written = 0;
  #read = 0;
  #closed = false;

  private constructor(writer: Deno.FsFile, reader: Deno.FsFile) {
    this.#writer = writer;
    this.#reader = reader;
  }

  /**
   * Makes the file in `dir` and unlinks it.
   *
   * @throws whatever `Deno.makeTempFile` or `Deno.open` throws (no such
   *   directory, no permission).
   */
  static async open(dir: string): Promise<SpillFile> {
    const path = await Deno.makeTempFile({ dir, prefix: "pothead-body-" });
    let writer: Deno.FsFile | undefined;
    try {
      writer = await Deno.open(path, { write: true });
      const reader = await Deno.open(path, { read: true });
      return new SpillFile(writer, reader);
    } catch (error) {
      writer?.close();
      throw error;
    } finally {
      await Deno.remove(path).catch(() => {});
    }
  }

  /** Appends all of `chunk`. */
  append(chunk: Uint8Array): Promise<void> {
    return this.#run(async () => {
      let at = 0;
      while (at < chunk.length) {
        at += await this.#writer.write(chunk.subarray(at));
      }
      this.#written += chunk.length;
    });
  }

  /**
   * Reads the oldest `length` bytes not read yet (at most what was
   * appended). Once everything appended has been read, the file is emptied,
   * so it never holds more than what waits in it.
   */
  take(length: number): Promise<Uint8Array> {
    return this.#run(async () => {
      const n = Math.min(length, this.#written - this.#read);
      const out = new Uint8Array(n);
      let at = 0;
      while (at < n) {
        const got = await this.#reader.read(out.subarray(at));
        if (got === null) {
          throw new Deno.errors.UnexpectedEof(
            `Cannot read spilled body: file ended after ${
              this.#read + at
            } of ${this.#written} bytes`,
          );
        }
        at += got;
      }
      this.#read += n;
      if (this.#read === this.#written) {
        await this.#writer.truncate(0);
        await this.#writer.seek(0, Deno.SeekMode.Start);
        await this.#reader.seek(0, Deno.SeekMode.Start);
        this.#read = this.#written = 0;
      }
      return out;
    });
  }

  /** Closes the file (its space is freed); operations still queued fail. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const f of [this.#writer, this.#reader]) {
      try {
        f.close();
      } catch {
        // closed already
      }
    }
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
