/**
 * Finding and reading the cgroups that limit a process (`_cgroup.ts`), on
 * bytes: `/proc/self/mountinfo` and `/proc/self/cgroup` as this build
 * machine (cgroup v1 with an empty v2 tree beside it), a container on
 * cgroup v1 and a container on cgroup v2 show them, and the v1 and v2 limit
 * files. `cgroup_real_test.ts` runs the same code in real cgroups.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import {
  type CgroupDir,
  cgroupDirsFrom,
  cgroupLimits,
  cgroupV1MemoryHeadroom,
  parseCfsQuota,
  parseMountinfo,
  readCgroupFiles,
} from "../_cgroup.ts";

/**
 * `Deno.test` with the op and resource sanitizers on: Deno 2.9 leaves them
 * off unless asked.
 */
function test(name: string, fn: () => void | Promise<void>): void {
  Deno.test({ name, fn, sanitizeOps: true, sanitizeResources: true });
}

const MiB = 1024 * 1024;

/** This build machine (2026-12-06): v1 controllers, an empty v2 tree. */
const HYBRID_MOUNTINFO = `\
23 1 254:0 / / rw,relatime - ext4 /dev/vda rw
24 23 0:22 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`;
const HYBRID_CGROUP = `\
9:name=systemd:/
8:pids:/
4:memory:/process_api/cb76
3:cpuset:/
2:cpuacct:/jobs/a
1:cpu:/jobs/a
0::/
`;

/** A container on cgroup v1 (no cgroup namespace): its own cgroup mounted. */
const DOCKER_V1_MOUNTINFO = `\
1281 1280 0:120 / / rw,relatime master:1 - overlay overlay rw
1290 1289 0:27 /docker/ae5c /sys/fs/cgroup/cpu,cpuacct ro,nosuid,nodev,noexec,relatime master:12 - cgroup cgroup rw,cpu,cpuacct
1291 1289 0:28 /docker/ae5c /sys/fs/cgroup/memory ro,nosuid,nodev,noexec,relatime master:13 - cgroup cgroup rw,memory
1292 1289 0:29 /docker/ae5c /sys/fs/cgroup/systemd ro,nosuid,nodev,noexec,relatime master:14 - cgroup cgroup rw,xattr,name=systemd
`;
const DOCKER_V1_CGROUP = `\
12:name=systemd:/docker/ae5c
9:memory:/docker/ae5c
4:cpu,cpuacct:/docker/ae5c
`;

/** A container on cgroup v2 with its own cgroup namespace. */
const DOCKER_V2_MOUNTINFO = `\
702 701 0:49 / / rw,relatime - overlay overlay rw
710 702 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
`;

const paths = (dirs: CgroupDir[]) =>
  dirs.map((d) => [d.path, d.version, d.cpuacct ?? null]);

test("parseMountinfo keeps the cgroup mounts, their roots and options", () => {
  const mounts = parseMountinfo(DOCKER_V1_MOUNTINFO);
  assert.deepEqual(mounts, [
    {
      fsType: "cgroup",
      root: "/docker/ae5c",
      mountPoint: "/sys/fs/cgroup/cpu,cpuacct",
      options: ["rw", "cpu", "cpuacct"],
    },
    {
      fsType: "cgroup",
      root: "/docker/ae5c",
      mountPoint: "/sys/fs/cgroup/memory",
      options: ["rw", "memory"],
    },
    {
      fsType: "cgroup",
      root: "/docker/ae5c",
      mountPoint: "/sys/fs/cgroup/systemd",
      options: ["rw", "xattr", "name=systemd"],
    },
  ]);
  assert.equal(parseMountinfo(HYBRID_MOUNTINFO).length, 6);
  // Escaped characters in paths; optional fields before the separator.
  assert.deepEqual(
    parseMountinfo(
      "50 1 0:40 /a\\040b /mnt/my\\040cg\\134x rw shared:3 master:4 - cgroup2 none rw\n",
    ),
    [{
      fsType: "cgroup2",
      root: "/a b",
      mountPoint: "/mnt/my cg\\x",
      options: ["rw"],
    }],
  );
  // Malformed lines are skipped, not guessed at.
  assert.deepEqual(
    parseMountinfo("garbage\n1 2 3 4 5 6 cgroup2\n1 2 0:1 / /x rw -\n"),
    [],
  );
});

test("cgroupDirsFrom on a hybrid host: the v2 tree, then each v1 tree; cpuacct read beside cpu", () => {
  const dirs = cgroupDirsFrom(
    HYBRID_CGROUP,
    parseMountinfo(HYBRID_MOUNTINFO),
  );
  assert.deepEqual(paths(dirs), [
    ["/sys/fs/cgroup/unified", 2, null],
    ["/sys/fs/cgroup/cpu/jobs/a", 1, "/sys/fs/cgroup/cpuacct/jobs/a"],
    ["/sys/fs/cgroup/cpu/jobs", 1, "/sys/fs/cgroup/cpuacct/jobs"],
    ["/sys/fs/cgroup/cpu", 1, "/sys/fs/cgroup/cpuacct"],
    ["/sys/fs/cgroup/memory/process_api/cb76", 1, null],
    ["/sys/fs/cgroup/memory/process_api", 1, null],
    ["/sys/fs/cgroup/memory", 1, null],
  ]);
  // cpu and cpuacct at different places: no pairing, the quota alone.
  const apart = cgroupDirsFrom(
    HYBRID_CGROUP.replace("2:cpuacct:/jobs/a", "2:cpuacct:/other"),
    parseMountinfo(HYBRID_MOUNTINFO),
  );
  assert.deepEqual(paths(apart).slice(1, 4), [
    ["/sys/fs/cgroup/cpu/jobs/a", 1, null],
    ["/sys/fs/cgroup/cpu/jobs", 1, null],
    ["/sys/fs/cgroup/cpu", 1, null],
  ]);
});

test("cgroupDirsFrom in containers: the mount shows the container's own cgroup", () => {
  // v1: cpu and cpuacct mounted together, so cpuacct.usage is in the same
  // directory; the cgroup is the mount's root, so no ancestors are visible.
  assert.deepEqual(
    paths(
      cgroupDirsFrom(DOCKER_V1_CGROUP, parseMountinfo(DOCKER_V1_MOUNTINFO)),
    ),
    [
      ["/sys/fs/cgroup/cpu,cpuacct", 1, null],
      ["/sys/fs/cgroup/memory", 1, null],
    ],
  );
  // v2 in a cgroup namespace: "/" is the container's cgroup.
  assert.deepEqual(
    paths(cgroupDirsFrom("0::/\n", parseMountinfo(DOCKER_V2_MOUNTINFO))),
    [["/sys/fs/cgroup", 2, null]],
  );
  // v2 without a namespace (a Kubernetes node's view): every ancestor.
  assert.deepEqual(
    paths(
      cgroupDirsFrom(
        "0::/kubepods.slice/pod-a/worker\n",
        parseMountinfo(DOCKER_V2_MOUNTINFO),
      ),
    ),
    [
      ["/sys/fs/cgroup/kubepods.slice/pod-a/worker", 2, null],
      ["/sys/fs/cgroup/kubepods.slice/pod-a", 2, null],
      ["/sys/fs/cgroup/kubepods.slice", 2, null],
      ["/sys/fs/cgroup", 2, null],
    ],
  );
  // A mount of part of the tree: only what is below its root.
  const sub = parseMountinfo(
    "9 1 0:26 /kubepods.slice/pod-a /cg rw - cgroup2 cgroup2 rw\n",
  );
  assert.deepEqual(
    paths(cgroupDirsFrom("0::/kubepods.slice/pod-a/worker\n", sub)),
    [["/cg/worker", 2, null], ["/cg", 2, null]],
  );
  // A cgroup outside what the mount shows (a process moved out of its
  // namespace, or a mount of another part of the tree): the mount's limits
  // are not its own, so nothing is read there.
  assert.deepEqual(cgroupDirsFrom("0::/../../sibling\n", sub), []);
  assert.deepEqual(cgroupDirsFrom("0::/elsewhere\n", sub), []);
  assert.deepEqual(
    paths(
      cgroupDirsFrom(
        HYBRID_CGROUP.replace("4:memory:/process_api/cb76", "4:memory:/.."),
        parseMountinfo(HYBRID_MOUNTINFO),
      ),
    ).map(([path]) => path),
    [
      "/sys/fs/cgroup/unified",
      "/sys/fs/cgroup/cpu/jobs/a",
      "/sys/fs/cgroup/cpu/jobs",
      "/sys/fs/cgroup/cpu",
    ],
  );
  // Nothing mounted, or no line for a mounted tree: nothing to read.
  assert.deepEqual(cgroupDirsFrom(HYBRID_CGROUP, []), []);
  assert.deepEqual(
    cgroupDirsFrom("", parseMountinfo(DOCKER_V1_MOUNTINFO)),
    [],
  );
});

test("cgroupDirsFrom picks the mount of a tree that shows the process's cgroup, and pairs cpuacct by cgroup", () => {
  // A tree mounted twice: first a part of it that does not hold the
  // process (another pod's cgroup, bind-mounted for a monitoring agent),
  // then the whole tree. The limits are read in the second.
  const twice = parseMountinfo(`\
30 1 0:26 /kubepods.slice/pod-b /host/pod-b rw - cgroup2 cgroup2 rw
31 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw
`);
  assert.deepEqual(
    paths(cgroupDirsFrom("0::/kubepods.slice/pod-a\n", twice)),
    [
      ["/sys/fs/cgroup/kubepods.slice/pod-a", 2, null],
      ["/sys/fs/cgroup/kubepods.slice", 2, null],
      ["/sys/fs/cgroup", 2, null],
    ],
  );
  const v1Twice = parseMountinfo(`\
32 1 0:29 /other /mnt/cpu-other rw - cgroup cgroup rw,cpu
33 1 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
34 1 0:30 /other /mnt/mem-other rw - cgroup cgroup rw,memory
35 1 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
`);
  assert.deepEqual(
    paths(cgroupDirsFrom("4:memory:/job\n1:cpu:/job\n", v1Twice)),
    [
      ["/sys/fs/cgroup/cpu/job", 1, null],
      ["/sys/fs/cgroup/cpu", 1, null],
      ["/sys/fs/cgroup/memory/job", 1, null],
      ["/sys/fs/cgroup/memory", 1, null],
    ],
  );
  // cpu and cpuacct mounted apart at different roots: the cpu cgroup
  // /docker/x is paired with the same cgroup in the cpuacct tree, whose
  // mount shows only that cgroup, and its ancestors with nothing there.
  const roots = parseMountinfo(`\
40 1 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
41 1 0:30 /docker/x /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
`);
  assert.deepEqual(
    paths(cgroupDirsFrom("2:cpuacct:/docker/x\n1:cpu:/docker/x\n", roots)),
    [
      ["/sys/fs/cgroup/cpu/docker/x", 1, "/sys/fs/cgroup/cpuacct"],
      ["/sys/fs/cgroup/cpu/docker", 1, null],
      ["/sys/fs/cgroup/cpu", 1, null],
    ],
  );
  // The same place below each mount, but different cgroups: not paired.
  const shifted = parseMountinfo(`\
40 1 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
41 1 0:30 /a /sys/fs/cgroup/cpuacct rw - cgroup cgroup rw,cpuacct
`);
  assert.deepEqual(
    paths(cgroupDirsFrom("2:cpuacct:/a/x\n1:cpu:/x\n", shifted)),
    [
      ["/sys/fs/cgroup/cpu/x", 1, null],
      ["/sys/fs/cgroup/cpu", 1, null],
    ],
  );
});

test("parseCfsQuota turns a v1 quota and period into CPUs, or null for -1", () => {
  assert.equal(parseCfsQuota("50000\n", "100000\n"), 0.5);
  assert.equal(parseCfsQuota("250000\n", "100000\n"), 2.5);
  assert.equal(parseCfsQuota("-1\n", "100000\n"), null);
  assert.throws(() => parseCfsQuota("lots", "100000"), SyntaxError);
  assert.throws(() => parseCfsQuota("50000", "0"), SyntaxError);
  assert.throws(() => parseCfsQuota("-2", "100000"), SyntaxError);
});

test("cgroupV1MemoryHeadroom is the limit minus the working set", () => {
  // The kernel's "no limit" with 4 KiB pages.
  assert.equal(
    cgroupV1MemoryHeadroom("9223372036854771712\n", "1048576\n"),
    null,
  );
  // 512 MiB - (100 MiB used - 4 MiB inactive file pages, descendants included)
  assert.equal(
    cgroupV1MemoryHeadroom(
      `${512 * MiB}\n`,
      `${100 * MiB}\n`,
      `cache 0\ninactive_file 1024\ntotal_inactive_file ${4 * MiB}\n`,
    ),
    416 * MiB,
  );
  // Without total_inactive_file, the cgroup's own inactive_file.
  assert.equal(
    cgroupV1MemoryHeadroom(
      `${512 * MiB}\n`,
      `${100 * MiB}\n`,
      `inactive_file ${MiB}\n`,
    ),
    413 * MiB,
  );
  assert.equal(cgroupV1MemoryHeadroom("100\n", "200\n"), 0);
  assert.throws(() => cgroupV1MemoryHeadroom("1G", "1"), SyntaxError);
  assert.throws(() => cgroupV1MemoryHeadroom("100", ""), SyntaxError);
});

test("cgroupLimits reads either layout's files; missing files limit nothing", () => {
  assert.deepEqual(
    cgroupLimits({
      version: 1,
      cfsQuota: "150000\n",
      cfsPeriod: "100000\n",
      cpuacctUsage: "2500000000\n",
      memoryLimit: `${MiB}\n`,
      memoryUsage: "0\n",
    }),
    { cpus: 1.5, usageUsec: 2_500_000, memoryHeadroom: MiB },
  );
  assert.deepEqual(
    cgroupLimits({
      version: 2,
      cpuMax: "50000 100000\n",
      cpuStat: "usage_usec 700\nuser_usec 500\n",
      memoryMax: "max\n",
      memoryCurrent: "5\n",
    }),
    { cpus: 0.5, usageUsec: 700, memoryHeadroom: null },
  );
  // No quota: the usage is not read (a v1 cpu.stat has no usage at all).
  assert.deepEqual(
    cgroupLimits({
      version: 1,
      cfsQuota: "-1\n",
      cfsPeriod: "100000\n",
      cpuacctUsage: "garbage",
    }),
    { cpus: null, usageUsec: null, memoryHeadroom: null },
  );
  assert.deepEqual(cgroupLimits({ version: 2 }), {
    cpus: null,
    usageUsec: null,
    memoryHeadroom: null,
  });
  assert.throws(
    () =>
      cgroupLimits({
        version: 1,
        cfsQuota: "1000\n",
        cfsPeriod: "100000\n",
        cpuacctUsage: "many\n",
      }),
    SyntaxError,
  );
});

test("readCgroupFiles reads v1 names, and cpuacct.usage from the cpuacct tree when apart", async () => {
  const dir = await Deno.makeTempDir({ prefix: "pothead-cgroup-" });
  try {
    const cpu = join(dir, "cpu", "job");
    const acct = join(dir, "cpuacct", "job");
    await Deno.mkdir(cpu, { recursive: true });
    await Deno.mkdir(acct, { recursive: true });
    await Deno.writeTextFile(join(cpu, "cpu.cfs_quota_us"), "25000\n");
    await Deno.writeTextFile(join(cpu, "cpu.cfs_period_us"), "100000\n");
    // A v1 cpu.stat has no usage: it must not be taken for v2's.
    await Deno.writeTextFile(join(cpu, "cpu.stat"), "nr_periods 3\n");
    await Deno.writeTextFile(join(acct, "cpuacct.usage"), "42000\n");
    const files = await readCgroupFiles({
      path: cpu,
      version: 1,
      cpuacct: acct,
    });
    assert.deepEqual(files, {
      version: 1,
      cfsQuota: "25000\n",
      cfsPeriod: "100000\n",
      cpuacctUsage: "42000\n",
    });
    assert.deepEqual(cgroupLimits(files), {
      cpus: 0.25,
      usageUsec: 42,
      memoryHeadroom: null,
    });
    // Read as v2, the same directory limits nothing.
    assert.deepEqual(
      cgroupLimits(await readCgroupFiles({ path: cpu, version: 2 })),
      { cpus: null, usageUsec: null, memoryHeadroom: null },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
