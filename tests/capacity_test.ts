/**
 * Adaptive capacity: the parsers on bytes, the gate on a fake `/proc` and
 * cgroup v2 tree that the tests rewrite between readings, and one reading of
 * the real `/proc/stat` under real CPU-bound load.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  capacityFrom,
  capacityGate,
  type CapacitySample,
  type CapacityUsage,
  cpuIdleFraction,
  parseMeminfo,
  parseProcStat,
  readCapacitySample,
} from "../_capacity.ts";
import {
  cgroupDirs,
  cgroupMemoryHeadroom,
  parseCpuMax,
  parseCpuStatUsage,
} from "../_cgroup.ts";

const FIXTURES = fileURLToPath(new URL("fixtures/proc", import.meta.url));
const HANG_GUARD = 20_000;

/**
 * `Deno.test` with the op and resource sanitizers on: Deno 2.9 leaves them
 * off unless asked, and these tests rely on them to catch leaked timers,
 * connections and processes.
 */
function test(
  nameOrDef: string | Deno.TestDefinition,
  fn?: (t: Deno.TestContext) => void | Promise<void>,
): void {
  const def = typeof nameOrDef === "string"
    ? { name: nameOrDef, fn: fn! }
    : nameOrDef;
  Deno.test({ sanitizeOps: true, sanitizeResources: true, ...def });
}
const MiB = 1024 * 1024;

function fixture(path: string): string {
  return Deno.readTextFileSync(join(FIXTURES, path));
}

/** Rejects after a generous time, so a broken test fails instead of hanging. */
async function guard<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out waiting for ${what}`)),
      HANG_GUARD,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Tracks whether a promise has settled, without awaiting it. */
function track(promise: Promise<void>) {
  const state = { settled: false, promise };
  promise.then(() => state.settled = true, () => state.settled = true);
  return state;
}

// --- parsers on bytes -------------------------------------------------------

test("parseProcStat sums user to steal, counts idle with iowait, and counts CPUs", () => {
  assert.deepEqual(parseProcStat(fixture("proc/stat")), {
    idle: 8500,
    total: 10000,
    cpus: 2,
  });
  // Guest time (fields 9 and 10) is inside user/nice already: not added.
  assert.deepEqual(
    parseProcStat("cpu  10 0 10 70 5 1 1 3 50 50\ncpu0 10 0 10 70 5 1 1 3\n"),
    { idle: 75, total: 100, cpus: 1 },
  );
  // Very old kernels have only four fields.
  assert.deepEqual(parseProcStat("cpu 1 2 3 4\n"), {
    idle: 4,
    total: 10,
    cpus: 1,
  });
  assert.throws(() => parseProcStat("intr 1 2 3\n"), SyntaxError);
  assert.throws(() => parseProcStat("cpu  1 2 x 4\n"), SyntaxError);
});

test("cpuIdleFraction is the idle share of the time between two readings", () => {
  const a = { idle: 8500, total: 10000, cpus: 2 };
  assert.equal(cpuIdleFraction(a, { idle: 8600, total: 10200, cpus: 2 }), 0.5);
  assert.equal(cpuIdleFraction(a, { idle: 8500, total: 10200, cpus: 2 }), 0);
  assert.equal(cpuIdleFraction(a, { idle: 8700, total: 10200, cpus: 2 }), 1);
  // Counters that did not move say nothing.
  assert.equal(cpuIdleFraction(a, a), null);
});

test("parseMeminfo reads MemAvailable in bytes, or estimates it on old kernels", () => {
  assert.deepEqual(parseMeminfo(fixture("proc/meminfo")), {
    total: 4096 * MiB,
    available: 2048 * MiB,
  });
  assert.deepEqual(parseMeminfo(fixture("samples/meminfo-no-available")), {
    total: 2048000 * 1024,
    available: (100000 + 20000 + 300000) * 1024,
  });
  assert.throws(() => parseMeminfo("Nothing: 1 kB\n"), SyntaxError);
});

test("parseCpuMax turns a quota and period into CPUs, or null for max", () => {
  assert.equal(
    parseCpuMax(fixture("cgroup/kubepods.slice/pod-a/cpu.max")),
    1.5,
  );
  assert.equal(parseCpuMax(fixture("cgroup/kubepods.slice/cpu.max")), null);
  assert.equal(parseCpuMax(fixture("samples/cpu.max-default-period")), 0.5);
  assert.throws(() => parseCpuMax("lots 100000"), SyntaxError);
  assert.throws(() => parseCpuMax("100 0"), SyntaxError);
});

test("parseCpuStatUsage reads usage_usec", () => {
  assert.equal(
    parseCpuStatUsage(fixture("cgroup/kubepods.slice/pod-a/cpu.stat")),
    5_000_000,
  );
  assert.throws(() => parseCpuStatUsage("user_usec 1\n"), SyntaxError);
});

test("cgroupMemoryHeadroom is the limit minus the working set", () => {
  const pod = "cgroup/kubepods.slice/pod-a/";
  // 1 GiB - (512 MiB current - 128 MiB inactive_file)
  assert.equal(
    cgroupMemoryHeadroom(
      fixture(pod + "memory.max"),
      fixture(pod + "memory.current"),
      fixture(pod + "memory.stat"),
    ),
    640 * MiB,
  );
  assert.equal(
    cgroupMemoryHeadroom(fixture(pod + "memory.max"), "536870912\n"),
    512 * MiB,
  );
  assert.equal(cgroupMemoryHeadroom("max\n", "1\n"), null);
  assert.equal(cgroupMemoryHeadroom("100\n", "200\n"), 0);
  assert.throws(() => cgroupMemoryHeadroom("1G", "1"), SyntaxError);
  assert.throws(() => cgroupMemoryHeadroom("100", ""), SyntaxError);
});

function statText(idle: number, total: number): string {
  const busy = total - idle;
  const half = (n: number) => Math.floor(n / 2);
  return `cpu  ${busy} 0 0 ${idle} 0 0 0 0 0 0\n` +
    `cpu0 ${half(busy)} 0 0 ${half(idle)} 0 0 0 0 0 0\n` +
    `cpu1 ${busy - half(busy)} 0 0 ${idle - half(idle)} 0 0 0 0 0 0\n`;
}

test("capacityFrom combines the machine and every cgroup limit", () => {
  const pod = {
    version: 2 as const,
    cpuMax: "150000 100000\n",
    cpuStat: "usage_usec 5000000\n",
    memoryMax: "1073741824\n",
    memoryCurrent: "536870912\n",
  };
  const before: CapacitySample = {
    at: 1000,
    stat: statText(8000, 10000),
    meminfo: fixture("proc/meminfo"),
    cgroups: [{ version: 2, cpuMax: "max 100000\n" }, pod],
  };
  const after: CapacitySample = {
    at: 2000, // one second later
    stat: statText(8100, 10200), // half of the 2 CPUs idle
    meminfo: fixture("proc/meminfo"),
    // The pod used 0.25 CPU-seconds in that second: 1.25 of 1.5 left.
    cgroups: [{ version: 2, cpuMax: "max 100000\n" }, {
      ...pod,
      cpuStat: "usage_usec 5250000\n",
    }],
  };
  const usage = capacityFrom(before, after);
  assert.ok(usage !== null);
  assert.equal(usage.idleFraction, 0.5);
  assert.equal(usage.cpus, 1.5);
  assert.equal(usage.idleCpu, 1); // the machine's 1 idle CPU is the lower
  assert.equal(usage.freeMemory, 512 * MiB); // the pod's, below MemAvailable
  assert.equal(usage.elapsed, 1000);

  // The pod using 1.4 CPUs leaves 0.1, below the machine's idle CPU.
  const busy = capacityFrom(before, {
    ...after,
    cgroups: [{ version: 2 }, { ...pod, cpuStat: "usage_usec 6400000\n" }],
  });
  assert.ok(busy !== null);
  assert.ok(Math.abs(busy.idleCpu - 0.1) < 1e-9, String(busy.idleCpu));

  // cgroup v1: a cpu quota of 0.5 CPU, whose cpuacct shows 0.2 CPU-seconds
  // used in that second, beside a memory cgroup limited to 256 MiB.
  const v1 = (usedNs: number) => [
    {
      version: 1 as const,
      cfsQuota: "50000\n",
      cfsPeriod: "100000\n",
      cpuacctUsage: `${usedNs}\n`,
    },
    {
      version: 1 as const,
      memoryLimit: "268435456\n",
      memoryUsage: "67108864\n",
      memoryStat: "total_inactive_file 0\n",
    },
  ];
  const v1Usage = capacityFrom(
    { ...before, cgroups: v1(7_000_000_000) },
    { ...after, cgroups: v1(7_200_000_000) },
  );
  assert.ok(v1Usage !== null);
  assert.equal(v1Usage.cpus, 0.5);
  assert.ok(Math.abs(v1Usage.idleCpu - 0.3) < 1e-9, String(v1Usage.idleCpu));
  assert.equal(v1Usage.freeMemory, 192 * MiB);

  // No files: nothing limits.
  const none = capacityFrom({ at: 0, cgroups: [] }, { at: 5, cgroups: [] });
  assert.deepEqual(none, {
    idleCpu: Infinity,
    cpus: Infinity,
    idleFraction: null,
    freeMemory: Infinity,
    elapsed: 5,
  });
  // /proc/stat that did not advance: no reading yet.
  assert.equal(capacityFrom(before, { ...after, stat: before.stat }), null);
});

test("cgroupDirs lists the process's cgroup and its ancestors, innermost first", async () => {
  const dirs = await cgroupDirs({
    procRoot: join(FIXTURES, "proc"),
    cgroupRoot: "/cg",
  });
  assert.deepEqual(dirs.map((d) => [d.path, d.version]), [
    ["/cg/kubepods.slice/pod-a/worker", 2],
    ["/cg/kubepods.slice/pod-a", 2],
    ["/cg/kubepods.slice", 2],
    ["/cg", 2],
  ]);
  // No cgroup v2 line (cgroup v1, or not Linux): the mount alone.
  assert.deepEqual(
    await cgroupDirs({ procRoot: "/nonexistent", cgroupRoot: "/cg" }),
    [{ path: "/cg", version: 2 }],
  );
});

test("readCapacitySample reads the fake tree and its limits apply", async () => {
  const roots = {
    procRoot: join(FIXTURES, "proc"),
    cgroupRoot: join(FIXTURES, "cgroup"),
  };
  const sample = await readCapacitySample(await cgroupDirs(roots), roots);
  assert.equal(sample.stat, fixture("proc/stat"));
  assert.equal(sample.cgroups.length, 4);
  assert.equal(sample.cgroups[1].cpuMax, "150000 100000\n");
  assert.equal(sample.cgroups[3].cpuMax, undefined); // the root has none
  const later = {
    ...sample,
    at: sample.at + 1000,
    stat: statText(9000, 12000),
  };
  const usage = capacityFrom(sample, later);
  assert.ok(usage !== null);
  assert.equal(usage.cpus, 1.5);
  assert.equal(usage.freeMemory, 640 * MiB);
});

// --- the gate on a fake tree ------------------------------------------------

async function copyTree(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    const src = join(from, entry.name);
    const dst = join(to, entry.name);
    if (entry.isDirectory) await copyTree(src, dst);
    else await Deno.copyFile(src, dst);
  }
}

interface FakeMachine {
  procRoot: string;
  cgroupRoot: string;
  /** Replaces a file atomically (a reader never sees it half written). */
  write(path: string, text: string): void;
  /** Advances /proc/stat every few ms; `busy` says whether CPUs are idle. */
  tick(busy: () => boolean): void;
  close(): Promise<void>;
}

async function fakeMachine(): Promise<FakeMachine> {
  const dir = await Deno.makeTempDir({ prefix: "pothead-proc-" });
  await copyTree(FIXTURES, dir);
  let timer: ReturnType<typeof setInterval> | undefined;
  let n = 0;
  const write = (path: string, text: string) => {
    const tmp = join(dir, `${path}.tmp${n++}`);
    Deno.writeTextFileSync(tmp, text);
    Deno.renameSync(tmp, join(dir, path));
  };
  return {
    procRoot: join(dir, "proc"),
    cgroupRoot: join(dir, "cgroup"),
    write,
    tick(busy) {
      let idle = 8000;
      let total = 10000;
      timer = setInterval(() => {
        total += 2;
        if (!busy()) idle += 2;
        write("proc/stat", statText(idle, total));
      }, 3);
    },
    async close() {
      clearInterval(timer);
      await Deno.remove(dir, { recursive: true });
    },
  };
}

/** Resolves once `count` more readings have been reported. */
function readings() {
  const seen: CapacityUsage[] = [];
  let waiting: { count: number; resolve(): void } | null = null;
  return {
    seen,
    onSample(usage: CapacityUsage) {
      seen.push(usage);
      if (waiting !== null && seen.length >= waiting.count) {
        waiting.resolve();
        waiting = null;
      }
    },
    after(count: number): Promise<void> {
      const target = seen.length + count;
      if (seen.length >= target) return Promise.resolve();
      const { promise, resolve } = Promise.withResolvers<void>();
      waiting = { count: target, resolve };
      return guard(promise, `${count} readings`);
    },
  };
}

test("capacity gate lets slot 0 through at once, reading nothing", async () => {
  let samples = 0;
  const gate = capacityGate({
    procRoot: "/nonexistent/proc",
    cgroupRoot: "/nonexistent/cgroup",
    onSample: () => samples++,
  });
  await gate(0, new AbortController().signal);
  assert.equal(samples, 0);
});

test("capacity gate holds a slot while the CPUs are busy and admits it once they idle", async () => {
  const machine = await fakeMachine();
  let busy = true;
  machine.tick(() => busy);
  const r = readings();
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 15,
    settle: 0,
    minIdleCpu: 0.75,
    onSample: r.onSample,
  });
  const controller = new AbortController();
  try {
    const wait = track(gate(1, controller.signal));
    await r.after(5);
    assert.equal(wait.settled, false);
    assert.ok(r.seen.every((u) => u.idleCpu === 0), JSON.stringify(r.seen));
    busy = false;
    await guard(wait.promise, "the slot to be admitted");
    assert.ok(r.seen.at(-1)!.idleCpu >= 0.75);
  } finally {
    controller.abort();
    await machine.close();
  }
});

test("capacity gate holds a slot while a cgroup's memory is nearly used up", async () => {
  const machine = await fakeMachine();
  machine.tick(() => false);
  const pod = "cgroup/kubepods.slice/pod-a/";
  // 1 GiB limit, 1000 MiB in use (no memory.stat): 24 MiB headroom.
  await Deno.remove(
    join(machine.cgroupRoot, "kubepods.slice/pod-a/memory.stat"),
  );
  machine.write(pod + "memory.current", `${1000 * MiB}\n`);
  const r = readings();
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 15,
    settle: 0,
    minFreeMemory: 256 * MiB,
    onSample: r.onSample,
  });
  const controller = new AbortController();
  try {
    const wait = track(gate(1, controller.signal));
    await r.after(5);
    assert.equal(wait.settled, false);
    assert.equal(r.seen.at(-1)!.freeMemory, 24 * MiB);
    machine.write(pod + "memory.current", `${600 * MiB}\n`);
    await guard(wait.promise, "the slot to be admitted");
    assert.equal(r.seen.at(-1)!.freeMemory, 424 * MiB);
  } finally {
    controller.abort();
    await machine.close();
  }
});

test("capacity gate holds a slot while its cgroup uses up the CPU quota", async () => {
  const machine = await fakeMachine();
  // No /proc/stat: only the cgroup measures CPU, so every reading counts.
  await Deno.remove(join(machine.procRoot, "stat"));
  const pod = "cgroup/kubepods.slice/pod-a/";
  // Memory blocks the first reading; from then on each reading adds 1000
  // CPU-seconds to the pod's usage, far over its 1.5-CPU quota.
  machine.write(pod + "memory.current", `${1020 * MiB}\n`);
  let usage = 5_000_000;
  let burning = true;
  const r = readings();
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 15,
    settle: 0,
    minIdleCpu: 0.5,
    onSample(u) {
      if (burning) {
        machine.write(pod + "memory.current", `${100 * MiB}\n`);
        usage += 1_000_000_000;
        machine.write(pod + "cpu.stat", `usage_usec ${usage}\n`);
      }
      r.onSample(u);
    },
  });
  const controller = new AbortController();
  try {
    const wait = track(gate(1, controller.signal));
    await r.after(6);
    assert.equal(wait.settled, false);
    assert.ok(r.seen.slice(1).every((u) => u.idleCpu === 0));
    assert.equal(r.seen[0].cpus, 1.5);
    burning = false;
    await guard(wait.promise, "the slot to be admitted");
    assert.equal(r.seen.at(-1)!.idleCpu, 1.5);
  } finally {
    controller.abort();
    await machine.close();
  }
});

test("capacity gate admits one slot per settle period, in the order they asked", async () => {
  const machine = await fakeMachine();
  machine.tick(() => false);
  const r = readings();
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 10,
    settle: 3_600_000, // an hour: the second slot must not pass here
    onSample: r.onSample,
  });
  const controller = new AbortController();
  try {
    const order: number[] = [];
    const second = track(
      gate(2, controller.signal).then(() => {
        order.push(2);
      }),
    );
    const first = track(
      gate(1, controller.signal).then(() => {
        order.push(1);
      }),
    );
    await guard(second.promise, "the first admission");
    assert.deepEqual(order, [2]); // slot 2 asked first
    await r.after(5);
    assert.equal(first.settled, false);
    assert.equal(r.seen.at(-1)!.idleCpu, 1.5); // the pod's quota
    controller.abort();
    await guard(first.promise, "the aborted wait to resolve");
    assert.deepEqual(order, [2, 1]);
    // Nothing left running: the sanitizers fail the test on a leaked timer.
  } finally {
    controller.abort();
    await machine.close();
  }
});

test("capacity gate with settle 0 admits waiting slots one reading apart", async () => {
  const machine = await fakeMachine();
  machine.tick(() => false);
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 10,
    settle: 0,
  });
  const signal = new AbortController().signal;
  try {
    await guard(
      Promise.all([gate(1, signal), gate(2, signal), gate(3, signal)]),
      "three admissions",
    );
  } finally {
    await machine.close();
  }
});

test("capacity gate resolves an aborted wait at once and leaves no timer", async () => {
  // After its first reading the gate waits an hour for the next: only the
  // abort can clear that timer before the sanitizers look.
  let reads = 0;
  const gate = capacityGate({
    procRoot: "/nonexistent/proc",
    cgroupRoot: "/nonexistent/cgroup",
    interval: 3_600_000,
    admit: () => (reads++, true),
  });
  const controller = new AbortController();
  const wait = gate(1, controller.signal);
  // Give the first (immediate) reading time to finish.
  for (let i = 0; i < 10; i++) await new Promise((r) => setTimeout(r, 5));
  controller.abort();
  await guard(wait, "the aborted wait");
  assert.equal(reads, 0); // never admitted
  // An already aborted signal resolves without waiting.
  await gate(1, controller.signal);
});

test("capacity gate asks the admit hook with the slot and the reading", async () => {
  const machine = await fakeMachine();
  machine.tick(() => false);
  const asked: number[] = [];
  let answers = 0;
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 10,
    settle: 0,
    admit(usage, slot) {
      assert.ok(usage.idleCpu >= 0.75);
      asked.push(slot);
      return Promise.resolve(++answers > 3); // "GPU busy" three times
    },
  });
  const failing = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 10,
    admit() {
      throw new Error("nvidia-smi: not found");
    },
  });
  const signal = new AbortController().signal;
  try {
    await guard(gate(3, signal), "admission");
    assert.deepEqual(asked, [3, 3, 3, 3]);
    await assert.rejects(
      guard(failing(1, signal), "the failing hook"),
      /nvidia-smi: not found/,
    );
  } finally {
    await machine.close();
  }
});

test("capacity gate fails the wait on an unparsable /proc/stat", async () => {
  const machine = await fakeMachine();
  machine.write("proc/stat", "garbage\n");
  const gate = capacityGate({
    procRoot: machine.procRoot,
    cgroupRoot: machine.cgroupRoot,
    interval: 10,
  });
  try {
    await assert.rejects(
      guard(gate(1, new AbortController().signal), "the failed wait"),
      (error: Error) =>
        error instanceof SyntaxError && /\/proc\/stat/.test(error.message),
    );
  } finally {
    await machine.close();
  }
});

test("capacityGate rejects invalid options by name", () => {
  assert.throws(() => capacityGate({ interval: 0 }), /"interval"/);
  assert.throws(() => capacityGate({ settle: -1 }), /"settle"/);
  assert.throws(() => capacityGate({ minIdleCpu: NaN }), /"minIdleCpu"/);
  assert.throws(() => capacityGate({ minFreeMemory: -5 }), /"minFreeMemory"/);
});

// --- the real /proc -----------------------------------------------------------

/** How this process fares reading /proc/stat: Deno needs --allow-all. */
function procAccess(): "ok" | "not-capable" | "none" {
  if (Deno.build.os !== "linux") return "none";
  try {
    parseProcStat(Deno.readTextFileSync("/proc/stat"));
    return "ok";
  } catch (error) {
    return error instanceof Deno.errors.NotCapable ? "not-capable" : "none";
  }
}
const PROC = procAccess();

test({
  name: "capacity gate fails loudly when Deno may not read /proc",
  // Only observable without --allow-all, as the project's test command runs.
  ignore: PROC !== "not-capable",
  async fn() {
    const gate = capacityGate({ interval: 10 });
    await assert.rejects(
      guard(gate(1, new AbortController().signal), "the failed wait"),
      (error: Error) =>
        error instanceof Deno.errors.NotCapable &&
        /--allow-all/.test(error.message),
    );
  },
});

// The readings run in a child with all permissions (`deno eval` has them),
// because Deno reads /proc only under --allow-all.
const PROBE = `
const mod = await import(${
  JSON.stringify(new URL("../_capacity.ts", import.meta.url).href)
});
const { cgroupDirs } = await import(${
  JSON.stringify(new URL("../_cgroup.ts", import.meta.url).href)
});
const dirs = await cgroupDirs();
const before = await mod.readCapacitySample(dirs);
await new Promise((r) => setTimeout(r, 1000));
const after = await mod.readCapacitySample(dirs);
const usage = mod.capacityFrom(before, after);
const seen = [];
const held = Promise.withResolvers();
const controller = new AbortController();
const gate = mod.capacityGate({
  interval: 300,
  settle: 0,
  minIdleCpu: 0.75,
  onSample(u) {
    seen.push(u);
    if (seen.length >= 3) held.resolve("held");
  },
});
const result = await Promise.race([
  gate(1, controller.signal).then(() => "admitted"),
  held.promise,
]);
controller.abort();
console.log(JSON.stringify({ usage, result, seen }));
`;

test({
  name: "real CPU-bound load shows as low idle CPU and holds a slot",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const cpus = Math.max(1, navigator.hardwareConcurrency);
    // One busy loop per CPU, each bounded by `timeout` in case we die.
    const loops = Array.from(
      { length: cpus },
      () =>
        new Deno.Command("timeout", {
          args: ["30", "sh", "-c", "while :; do :; done"],
          stdin: "null",
          stdout: "null",
          stderr: "null",
        }).spawn(),
    );
    try {
      // Let the loops start before the first window begins.
      await new Promise((resolve) => setTimeout(resolve, 300));
      const out = await guard(
        new Deno.Command(Deno.execPath(), {
          args: ["eval", PROBE],
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output(),
        "the probe",
      );
      const stderr = new TextDecoder().decode(out.stderr);
      assert.ok(out.success, stderr);
      const { usage, result, seen } = JSON.parse(
        new TextDecoder().decode(out.stdout),
      );
      assert.ok(
        usage.idleFraction !== null && usage.idleFraction < 0.5,
        `idle fraction under load: ${usage.idleFraction}`,
      );
      assert.equal(result, "held", JSON.stringify(seen));
      assert.ok(
        seen.every((u: CapacityUsage) => u.idleCpu < 0.75),
        JSON.stringify(seen),
      );
    } finally {
      for (const loop of loops) {
        try {
          loop.kill("SIGTERM");
        } catch {
          // already exited
        }
      }
      await Promise.all(loops.map((loop) => loop.status));
    }
  },
});
