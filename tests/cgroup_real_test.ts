/**
 * Adaptive capacity in real cgroups: the test makes cgroups with a CPU quota
 * and a memory limit, starts processes in them, and checks that their
 * readings and the worker's `--adaptive` gate obey those limits rather than
 * the machine's. It uses cgroup v2 where the unified tree offers the `cpu`
 * controller, and cgroup v1 otherwise (this build machine). Needs Linux and
 * root (`.ci/run` runs as root); ignored elsewhere.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { parseMountinfo } from "../_cgroup.ts";
import { startHub } from "./_hub.ts";
import { closeAll, runDeno, spawnDeno } from "./_procs.ts";
import { waitFor } from "./_wait.ts";

const MiB = 1024 * 1024;
const PERIOD = 100_000;

/** A cgroup made for one test: the directories a process must join. */
interface TestCgroup {
  version: 1 | 2;
  /** Where to write a pid (one per v1 tree). */
  join: string[];
  /** Whether the memory limit is set (the controller may be missing). */
  memory: boolean;
  remove(): Promise<void>;
}

/**
 * Runs a shell command and returns its output. Deno reads and writes /proc
 * and /sys only under --allow-all, which the suite does not grant, so the
 * test sets its cgroups up through `sh` (the probe and the workers it starts
 * run with -A, as a worker using `--adaptive` must).
 */
function sh(script: string, ...args: string[]): string {
  const out = new Deno.Command("/bin/sh", {
    args: ["-c", script, "sh", ...args],
    stdin: "null",
  }).outputSync();
  const text = new TextDecoder();
  if (!out.success) {
    throw new Error(`sh -c ${script} failed: ${text.decode(out.stderr)}`);
  }
  return text.decode(out.stdout);
}

const LINUX_ROOT = Deno.build.os === "linux" && Deno.uid() === 0;
const MOUNTS = LINUX_ROOT ? parseMountinfo(sh("cat /proc/self/mountinfo")) : [];
const V2 = MOUNTS.find((m) => m.fsType === "cgroup2" && m.root === "/");
const V2_CONTROLLERS = V2 === undefined
  ? []
  : sh('cat "$1/cgroup.controllers"', V2.mountPoint).split(/\s+/);
const v1Mount = (controller: string) =>
  MOUNTS.find((m) =>
    m.fsType === "cgroup" && m.root === "/" && m.options.includes(controller)
  );
const LAYOUT: 1 | 2 | null = !LINUX_ROOT
  ? null
  : V2_CONTROLLERS.includes("cpu")
  ? 2
  : v1Mount("cpu") !== undefined
  ? 1
  : null;

async function removeDir(dir: string): Promise<void> {
  // A process that just exited can hold its cgroup for a moment (EBUSY).
  for (let i = 0;; i++) {
    try {
      sh('[ ! -d "$1" ] || rmdir "$1"', dir);
      return;
    } catch (error) {
      if (i >= 50) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** Writes `value` into the file `name` of the cgroup `dir`. */
function write(dir: string, name: string, value: string): void {
  sh('echo "$3" > "$1/$2"', dir, name, value);
}

/** Makes a cgroup allowing `cpus` CPUs and `memory` bytes. */
function makeCgroup(cpus: number, memory: number): TestCgroup {
  const name = `pothead-test-${crypto.randomUUID().slice(0, 8)}`;
  // Undone by remove() or, if a write fails half-way, here.
  const made: string[] = [];
  try {
    return makeIn(name, cpus, memory, made);
  } catch (error) {
    for (const dir of made.reverse()) {
      try {
        sh('rmdir "$1"', dir);
      } catch {
        // reported by the error below
      }
    }
    throw error;
  }
}

function makeIn(
  name: string,
  cpus: number,
  memory: number,
  made: string[],
): TestCgroup {
  const quota = String(Math.round(cpus * PERIOD));
  if (LAYOUT === 2) {
    const withMemory = V2_CONTROLLERS.includes("memory");
    write(
      V2!.mountPoint,
      "cgroup.subtree_control",
      withMemory ? "+cpu +memory" : "+cpu",
    );
    const dir = join(V2!.mountPoint, name);
    sh('mkdir "$1"', dir);
    made.push(dir);
    write(dir, "cpu.max", `${quota} ${PERIOD}`);
    if (withMemory) write(dir, "memory.max", String(memory));
    return {
      version: 2,
      join: [dir],
      memory: withMemory,
      remove: () => removeDir(dir),
    };
  }
  const cpu = v1Mount("cpu")!;
  const dirs = [join(cpu.mountPoint, name)];
  const acct = v1Mount("cpuacct");
  if (acct !== undefined && acct !== cpu) {
    dirs.push(join(acct.mountPoint, name));
  }
  const mem = v1Mount("memory");
  if (mem !== undefined) dirs.push(join(mem.mountPoint, name));
  for (const dir of dirs) sh('mkdir "$1"', dir), made.push(dir);
  write(dirs[0], "cpu.cfs_period_us", String(PERIOD));
  write(dirs[0], "cpu.cfs_quota_us", quota);
  if (mem !== undefined) {
    write(dirs.at(-1)!, "memory.limit_in_bytes", String(memory));
  }
  return {
    version: 1,
    join: dirs,
    memory: mem !== undefined,
    async remove() {
      for (const dir of dirs) await removeDir(dir);
    },
  };
}

/**
 * Whether this machine lets the test make cgroups: root in a container may
 * see a read-only cgroup mount, or (v2) a namespace root that holds
 * processes and cannot enable controllers for children.
 */
function canMakeCgroups(): boolean {
  if (LAYOUT === null) return false;
  let made: TestCgroup | undefined;
  try {
    made = makeCgroup(1, 512 * MiB);
    return true;
  } catch {
    return false;
  } finally {
    // Nothing joined it, so it goes at once.
    for (const dir of made?.join ?? []) sh('rmdir "$1"', dir);
  }
}

const USABLE = canMakeCgroups();

function test(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name,
    ignore: !USABLE,
    sanitizeOps: true,
    sanitizeResources: true,
    fn,
  });
}

// Two readings 600 ms apart, first while the probe sleeps and then while it
// spins, each as the gate computes them.
const PROBE = `
const { capacityFrom, readCapacitySample } = await import(${
  JSON.stringify(new URL("../_capacity.ts", import.meta.url).href)
});
const { cgroupDirs } = await import(${
  JSON.stringify(new URL("../_cgroup.ts", import.meta.url).href)
});
const dirs = await cgroupDirs();
const measure = async (spin) => {
  const before = await readCapacitySample(dirs);
  const end = performance.now() + 600;
  if (spin) while (performance.now() < end);
  else await new Promise((r) => setTimeout(r, 600));
  const after = await readCapacitySample(dirs);
  return {
    ...capacityFrom(before, after),
    // The cgroups alone, without the machine's idle time.
    cgroupIdleCpu: capacityFrom(
      { ...before, stat: undefined },
      { ...after, stat: undefined },
    ).idleCpu,
  };
};
const idle = await measure(false);
const busy = await measure(true);
console.log(JSON.stringify({ dirs: dirs.map((d) => d.path), idle, busy }));
`;

test("readings in a real cgroup give its CPU quota, the CPU it used and its memory limit", async () => {
  const cgroup = makeCgroup(0.5, 512 * MiB);
  try {
    const out = await runDeno(["eval", PROBE], { cgroups: cgroup.join });
    assert.equal(out.code, 0, out.stderr);
    const { dirs, idle, busy } = JSON.parse(out.stdout);
    for (const dir of cgroup.join.slice(0, 1)) {
      assert.ok(dirs.includes(dir), `${dir} not in ${dirs}`);
    }
    // The quota, not the machine's CPUs.
    assert.equal(idle.cpus, 0.5, out.stdout);
    assert.equal(busy.cpus, 0.5, out.stdout);
    // Sleeping, the cgroup's quota is nearly all left (what the machine has
    // idle depends on other jobs); spinning, the probe uses it up (the
    // kernel throttles it at 0.5 CPU), or a busy machine has less.
    assert.ok(idle.cgroupIdleCpu > 0.4, out.stdout);
    assert.ok(idle.idleCpu <= idle.cgroupIdleCpu, out.stdout);
    assert.ok(busy.idleCpu < 0.2, out.stdout);
    if (cgroup.memory) {
      // The limit less what the probe holds, far below the machine's.
      assert.ok(idle.freeMemory <= 512 * MiB, out.stdout);
      assert.ok(idle.freeMemory > 256 * MiB, out.stdout);
    }
  } finally {
    await cgroup.remove();
  }
});

test("--adaptive opens a second slot where the cgroup leaves a CPU and 256 MiB, never where its quota or its memory limit leaves less", async () => {
  const cgroups = {
    cpu: makeCgroup(0.2, 1024 * MiB),
    roomy: makeCgroup(2, 1024 * MiB),
    memory: makeCgroup(2, 192 * MiB),
  };
  const server = startHub();
  const workers = [];
  try {
    for (const [pool, cgroup] of Object.entries(cgroups)) {
      if (pool === "memory" && !cgroup.memory) continue;
      workers.push(spawnDeno(`worker ${pool}`, [
        "run",
        "-A",
        "worker.ts",
        "--connect",
        `127.0.0.1:${server.workerAddr.port}`,
        "--pool",
        pool,
        "--concurrency",
        "2",
        "--adaptive",
        "--min-idle-cpu",
        "0.3",
        "--min-free-memory",
        "256",
        "--settle",
        "0",
        "examples/hello.ts",
      ], { cgroups: cgroup.join }));
    }
    const slots = (pool: string) =>
      server.hub.stats.pools.find((p) => p.name === pool)?.slots ?? 0;
    const limited = cgroups.memory.memory ? ["cpu", "memory"] : ["cpu"];
    await waitFor(
      () => slots("roomy") === 2 && limited.every((p) => slots(p) === 1),
      "two slots in the roomy cgroup and one in each limited one",
      30_000,
    );
    // The limited workers have read as often as the roomy one, and more:
    // 0.2 CPU can never show 0.3 idle, nor 192 MiB show 256 free.
    await new Promise((r) => setTimeout(r, 2000));
    for (const pool of limited) assert.equal(slots(pool), 1, pool);
    assert.equal(slots("roomy"), 2);
  } finally {
    await closeAll(...workers);
    await server.shutdown();
    for (const cgroup of Object.values(cgroups)) await cgroup.remove();
  }
});
