/**
 * Hang guards shared by the tests: they bound how long a test may wait,
 * and never assert on a duration.
 *
 * @module
 */

/**
 * Settles like `promise`, or rejects after `ms` milliseconds naming `what`:
 * a hang guard for tests, never a timing assertion.
 */
export async function deadline<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Hang guard: ${what} not done within ${ms} ms`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Polls `check` every 10 ms until it returns true; rejects after `ms`
 * milliseconds naming `what` (a hang guard).
 */
export async function waitFor(
  check: () => boolean | Promise<boolean>,
  what: string,
  ms = 10_000,
): Promise<void> {
  const until = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > until) {
      throw new Error(`Hang guard: ${what} not true within ${ms} ms`);
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}
