/**
 * The cgroups that limit this process, for adaptive capacity: where their
 * directories are, and what their files say.
 *
 * Linux has two cgroup layouts. Version 2 is one tree (`0::/path` in
 * `/proc/self/cgroup`) whose directories hold `cpu.max`, `cpu.stat`,
 * `memory.max`, `memory.current` and `memory.stat`. Version 1 mounts a tree
 * per controller (or per group of controllers), each with a path of its own
 * (`4:memory:/path`), and names its files differently: `cpu.cfs_quota_us`
 * and `cpu.cfs_period_us`, `cpuacct.usage`, `memory.limit_in_bytes` and
 * `memory.usage_in_bytes`. Hosts in hybrid mode have both (version 1 for the
 * controllers, an empty version 2 tree beside them).
 *
 * Where each tree is mounted, and which part of it a container sees, comes
 * from `/proc/self/mountinfo` ({@linkcode parseMountinfo},
 * {@linkcode cgroupDirsFrom}); the files are parsed by pure functions
 * ({@linkcode cgroupLimits}); only {@linkcode cgroupDirs} and
 * {@linkcode readCgroupFiles} touch the file system.
 *
 * @module
 */

import { join } from "node:path";

/** One cgroup file system in `/proc/self/mountinfo`. */
export interface CgroupMount {
  /** `cgroup2` (the unified tree) or `cgroup` (a version 1 tree). */
  fsType: "cgroup" | "cgroup2";
  /** The cgroup the mount shows at its mount point (`/` for the whole tree). */
  root: string;
  /** Where it is mounted. */
  mountPoint: string;
  /** Its super options (for version 1, the controllers it carries). */
  options: string[];
}

// mountinfo escapes space, tab, newline and backslash in paths as \ooo.
function unescapeMountPath(path: string): string {
  return path.replace(
    /\\([0-7]{3})/g,
    (_, octal: string) => String.fromCharCode(parseInt(octal, 8)),
  );
}

/**
 * Parses `/proc/self/mountinfo` (proc(5)) into its cgroup mounts; other
 * mounts and malformed lines are skipped.
 */
export function parseMountinfo(text: string): CgroupMount[] {
  const mounts: CgroupMount[] = [];
  for (const line of text.split("\n")) {
    // id parent major:minor root mount-point options [optional...] - type source super-options
    const fields = line.split(" ");
    const dash = fields.indexOf("-", 6);
    if (dash < 0 || fields.length < dash + 4) continue;
    const fsType = fields[dash + 1];
    if (fsType !== "cgroup" && fsType !== "cgroup2") continue;
    mounts.push({
      fsType,
      root: unescapeMountPath(fields[3]),
      mountPoint: unescapeMountPath(fields[4]),
      options: fields[dash + 3].split(","),
    });
  }
  return mounts;
}

/** A cgroup directory to read, and which layout its files follow. */
export interface CgroupDir {
  /** The directory. */
  path: string;
  /** 2 for the unified tree, 1 for a version 1 controller's tree. */
  version: 1 | 2;
  /**
   * Version 1 only: the directory of the same cgroup in the `cpuacct` tree,
   * when that controller is mounted apart from `cpu` (its `cpuacct.usage`
   * is the use a `cpu` quota limits).
   */
  cpuacct?: string;
}

// The directories from `dir` (the process's cgroup) up to `mountPoint`.
function chain(mountPoint: string, relative: string[]): string[] {
  const dirs: string[] = [];
  for (let n = relative.length; n >= 0; n--) {
    dirs.push(join(mountPoint, ...relative.slice(0, n)));
  }
  return dirs;
}

// The process's cgroup path below a mount's root, as path segments, or
// null when it is not below it (another namespace's view: `/../..`).
function below(root: string, path: string): string[] | null {
  const parts = path.split("/").filter((p) => p !== "");
  const rootParts = root.split("/").filter((p) => p !== "");
  if (parts.includes("..")) return null;
  for (let i = 0; i < rootParts.length; i++) {
    if (parts[i] !== rootParts[i]) return null;
  }
  return parts.slice(rootParts.length);
}

/**
 * The version 1 controllers whose trees set limits: `cpuacct` only counts,
 * and is read in the `cpu` tree's directories (or beside them).
 */
const V1_CONTROLLERS = ["cpu", "memory"];

/**
 * The cgroup directories that limit this process, innermost first within
 * each tree: for the unified tree and for each version 1 tree that carries
 * `cpu` or `memory`, the process's own cgroup and each ancestor up to the
 * mount point (the first mount of that tree that shows the cgroup). A tree
 * whose mounts do not show the process's cgroup (mounts of other parts of
 * the tree, or a process moved out of its cgroup namespace: `/..`) is left
 * out: their limits are not this process's.
 *
 * @param cgroup the contents of `/proc/self/cgroup`.
 * @param mounts the cgroup mounts, from {@linkcode parseMountinfo}.
 */
export function cgroupDirsFrom(
  cgroup: string,
  mounts: CgroupMount[],
): CgroupDir[] {
  const dirs: CgroupDir[] = [];
  const seen = new Set<string>();
  const add = (dir: CgroupDir) => {
    if (!seen.has(dir.path)) seen.add(dir.path), dirs.push(dir);
  };
  const paths = new Map<string, string>(); // controller (or "") -> path
  for (const line of cgroup.split("\n")) {
    const m = /^[0-9]+:([^:]*):(\/.*)$/.exec(line);
    if (m === null) continue;
    if (m[1] === "") paths.set("", m[2]);
    else for (const c of m[1].split(",")) paths.set(c, m[2]);
  }
  // The first mount of a tree that shows the process's cgroup in it (a
  // tree can be mounted more than once, at different roots), and that
  // cgroup's place below the mount's root.
  const find = (path: string | undefined, is: (m: CgroupMount) => boolean) => {
    if (path === undefined) return undefined;
    for (const mount of mounts) {
      if (!is(mount)) continue;
      const rel = below(mount.root, path);
      if (rel !== null) return { mount, rel };
    }
    return undefined;
  };
  const v2 = find(paths.get(""), (m) => m.fsType === "cgroup2");
  if (v2 !== undefined) {
    for (const path of chain(v2.mount.mountPoint, v2.rel)) {
      add({ path, version: 2 });
    }
  }
  const v1 = (controller: string) =>
    find(
      paths.get(controller),
      (m) => m.fsType === "cgroup" && m.options.includes(controller),
    );
  const cpuacct = v1("cpuacct");
  for (const controller of V1_CONTROLLERS) {
    const tree = v1(controller);
    if (tree === undefined) continue;
    const { mount, rel } = tree;
    // Pair each cpu cgroup with the same cgroup (by its path in the
    // hierarchy, not below the mount) in a separate cpuacct tree, when the
    // process is in the same cgroup in both and that tree's mount shows it.
    const pair = controller === "cpu" && cpuacct !== undefined &&
      cpuacct.mount !== mount &&
      paths.get("cpu") === paths.get("cpuacct");
    const rootParts = mount.root.split("/").filter((p) => p !== "");
    chain(mount.mountPoint, rel).forEach((path, i) => {
      const n = rel.length - i; // path is the cgroup rel.slice(0, n)
      const acctRel = pair
        ? below(
          cpuacct.mount.root,
          "/" + [...rootParts, ...rel.slice(0, n)].join("/"),
        )
        : null;
      add({
        path,
        version: 1,
        cpuacct: acctRel === null
          ? undefined
          : join(cpuacct!.mount.mountPoint, ...acctRel),
      });
    });
  }
  return dirs;
}

/**
 * A file's text, or `undefined` when it does not exist.
 *
 * @throws {Deno.errors.NotCapable} naming `--allow-all` when Deno may not
 *   read it; any other error as it is.
 */
export async function readOptional(
  path: string,
): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (error) {
    // Missing (not Linux, a controller that is not there, a cgroup without
    // that limit): nothing is limited. Anything else must not pass for "no
    // limit".
    if (error instanceof Deno.errors.NotFound) return undefined;
    if (error instanceof Deno.errors.NotCapable) {
      throw new Deno.errors.NotCapable(
        `Cannot read "${path}" for adaptive capacity: Deno reads /proc and /sys only with --allow-all`,
        { cause: error },
      );
    }
    throw error;
  }
}

/** Where the capacity readings come from: `/proc` and the cgroup files. */
export interface CapacityRoots {
  /**
   * The proc file system (`stat`, `meminfo`, `self/cgroup` and
   * `self/mountinfo` are read).
   * @default {"/proc"}
   */
  procRoot?: string;
  /**
   * A cgroup v2 tree to read instead of the cgroup mounts (v2 and v1) that
   * `self/mountinfo` lists; for tests and unusual mounts. Without
   * `self/mountinfo`, `/sys/fs/cgroup` is taken as one.
   */
  cgroupRoot?: string;
}

/**
 * The cgroup directories that limit this process (see
 * {@linkcode cgroupDirsFrom}), found from `/proc/self/cgroup` and
 * `/proc/self/mountinfo`. Neither file (not Linux): the unified tree's
 * root alone, whose files will be missing too.
 *
 * @throws {Deno.errors.NotCapable} when Deno may not read `/proc`.
 */
export async function cgroupDirs(
  roots: CapacityRoots = {},
): Promise<CgroupDir[]> {
  const procRoot = roots.procRoot ?? "/proc";
  const [cgroup, mountinfo] = await Promise.all([
    readOptional(join(procRoot, "self", "cgroup")),
    roots.cgroupRoot === undefined
      ? readOptional(join(procRoot, "self", "mountinfo"))
      : undefined,
  ]);
  const mounts = mountinfo !== undefined ? parseMountinfo(mountinfo) : [{
    fsType: "cgroup2" as const,
    root: "/",
    mountPoint: roots.cgroupRoot ?? "/sys/fs/cgroup",
    options: [],
  }];
  const dirs = cgroupDirsFrom(cgroup ?? "0::/\n", mounts);
  // No cgroup line for the tree (cgroup v1 only, or none): its mount point.
  if (dirs.length === 0 && mountinfo === undefined) {
    return [{ path: mounts[0].mountPoint, version: 2 }];
  }
  return dirs;
}

/** The contents of one cgroup directory's files; absent when unreadable. */
export interface CgroupFiles {
  /** 2 for the unified tree's file names, 1 for version 1's. */
  version: 1 | 2;
  /** v2 `cpu.max`: the CPU quota and period. */
  cpuMax?: string;
  /** v2 `cpu.stat`: CPU time used (`usage_usec`). */
  cpuStat?: string;
  /** v2 `memory.max`: the memory limit. */
  memoryMax?: string;
  /** v2 `memory.current`: memory in use, page cache included. */
  memoryCurrent?: string;
  /** v1 `cpu.cfs_quota_us`: CPU time per period, or -1 for none. */
  cfsQuota?: string;
  /** v1 `cpu.cfs_period_us`: the quota's period. */
  cfsPeriod?: string;
  /** v1 `cpuacct.usage`: CPU time used, in nanoseconds. */
  cpuacctUsage?: string;
  /** v1 `memory.limit_in_bytes`: the memory limit. */
  memoryLimit?: string;
  /** v1 `memory.usage_in_bytes`: memory in use, page cache included. */
  memoryUsage?: string;
  /** `memory.stat`: the breakdown (its inactive file pages are reclaimable). */
  memoryStat?: string;
}

// Each layout's file names, by the CgroupFiles field that holds them.
const FILES = {
  2: {
    cpuMax: "cpu.max",
    cpuStat: "cpu.stat",
    memoryMax: "memory.max",
    memoryCurrent: "memory.current",
    memoryStat: "memory.stat",
  },
  1: {
    cfsQuota: "cpu.cfs_quota_us",
    cfsPeriod: "cpu.cfs_period_us",
    cpuacctUsage: "cpuacct.usage",
    memoryLimit: "memory.limit_in_bytes",
    memoryUsage: "memory.usage_in_bytes",
    memoryStat: "memory.stat",
  },
} as const;

/** Reads one cgroup directory's files (missing ones are left out). */
export async function readCgroupFiles(dir: CgroupDir): Promise<CgroupFiles> {
  const files: CgroupFiles = { version: dir.version };
  await Promise.all(
    Object.entries(FILES[dir.version]).map(async ([field, name]) => {
      const where = name === "cpuacct.usage"
        ? dir.cpuacct ?? dir.path
        : dir.path;
      const text = await readOptional(join(where, name));
      if (text !== undefined) {
        (files as unknown as Record<string, string>)[field] = text;
      }
    }),
  );
  return files;
}

/**
 * Parses a cgroup v2 `cpu.max` ("$MAX $PERIOD", or "max $PERIOD") into the
 * number of CPUs the quota allows.
 *
 * @returns CPUs (e.g. 1.5 for "150000 100000"), or `null` for no limit.
 * @throws {SyntaxError} on anything else.
 */
export function parseCpuMax(text: string): number | null {
  const m = /^\s*(max|[0-9]+)(?:\s+([0-9]+))?\s*$/.exec(text);
  if (m === null) {
    throw new SyntaxError(
      `Cannot parse cpu.max: received ${JSON.stringify(text)}`,
    );
  }
  if (m[1] === "max") return null;
  const period = Number(m[2] ?? 100_000);
  if (!(period > 0)) {
    throw new SyntaxError(
      `Cannot parse cpu.max: period is 0 in ${JSON.stringify(text)}`,
    );
  }
  return Number(m[1]) / period;
}

/**
 * Parses cgroup v1 `cpu.cfs_quota_us` and `cpu.cfs_period_us` into the
 * number of CPUs the quota allows.
 *
 * @returns CPUs (e.g. 0.5 for "50000" and "100000"), or `null` for no limit
 *   (a quota of -1).
 * @throws {SyntaxError} on anything else.
 */
export function parseCfsQuota(quota: string, period: string): number | null {
  const q = quota.trim();
  const p = period.trim();
  if (q === "-1") return null;
  if (!/^[0-9]+$/.test(q) || !/^[0-9]+$/.test(p) || Number(p) === 0) {
    throw new SyntaxError(
      `Cannot parse cpu.cfs_quota_us and cpu.cfs_period_us: received ${
        JSON.stringify(quota)
      } and ${JSON.stringify(period)}`,
    );
  }
  return Number(q) / Number(p);
}

/**
 * Reads `usage_usec` (CPU time used by the cgroup, in microseconds) from a
 * cgroup v2 `cpu.stat`.
 *
 * @throws {SyntaxError} when the field is missing.
 */
export function parseCpuStatUsage(text: string): number {
  const m = /^usage_usec\s+([0-9]+)\s*$/m.exec(text);
  if (m === null) {
    throw new SyntaxError(
      `Cannot parse cpu.stat: no usage_usec in ${
        JSON.stringify(text.slice(0, 80))
      }`,
    );
  }
  return Number(m[1]);
}

function bytes(text: string, file: string): number {
  const t = text.trim();
  if (!/^[0-9]+$/.test(t)) {
    throw new SyntaxError(
      `Cannot parse ${file}: received ${JSON.stringify(text)}`,
    );
  }
  return Number(t);
}

function statField(stat: string | undefined, name: string): number | null {
  if (stat === undefined) return null;
  const m = new RegExp(`^${name}\\s+([0-9]+)\\s*$`, "m").exec(stat);
  return m === null ? null : Number(m[1]);
}

/**
 * Bytes a cgroup v2 may still allocate: `memory.max` minus the working set
 * (`memory.current` less the reclaimable `inactive_file` of `memory.stat`,
 * as Kubernetes counts it), never below 0.
 *
 * @param max the contents of `memory.max` ("max" or bytes).
 * @param current the contents of `memory.current` (bytes).
 * @param stat the contents of `memory.stat`, if readable.
 * @returns the headroom in bytes, or `null` when `memory.max` is "max".
 * @throws {SyntaxError} on unparsable contents.
 */
export function cgroupMemoryHeadroom(
  max: string,
  current: string,
  stat?: string,
): number | null {
  if (max.trim() === "max") return null;
  const limit = bytes(max, "memory.max");
  const used = bytes(current, "memory.current");
  const working = Math.max(0, used - (statField(stat, "inactive_file") ?? 0));
  return Math.max(0, limit - working);
}

/**
 * The smallest `memory.limit_in_bytes` taken as "no limit": the kernel shows
 * an unset limit as the largest page-aligned signed 64-bit value
 * (9223372036854771712 with 4 KiB pages).
 */
const V1_UNLIMITED = 2 ** 62;

/**
 * Bytes a cgroup v1 may still allocate: `memory.limit_in_bytes` minus the
 * working set (`memory.usage_in_bytes` less the reclaimable inactive file
 * pages of `memory.stat`: `total_inactive_file`, which counts descendants
 * as the usage does, or else `inactive_file`), never below 0.
 *
 * @returns the headroom in bytes, or `null` when no limit is set.
 * @throws {SyntaxError} on unparsable contents.
 */
export function cgroupV1MemoryHeadroom(
  limit: string,
  usage: string,
  stat?: string,
): number | null {
  const max = bytes(limit, "memory.limit_in_bytes");
  if (max >= V1_UNLIMITED) return null;
  const used = bytes(usage, "memory.usage_in_bytes");
  const inactive = statField(stat, "total_inactive_file") ??
    statField(stat, "inactive_file") ?? 0;
  return Math.max(0, max - Math.max(0, used - inactive));
}

/** What one cgroup directory's files say, whichever layout. */
export interface CgroupLimits {
  /** CPUs its quota allows, or `null` for none. */
  cpus: number | null;
  /** CPU time its processes have used, in microseconds, or `null` if unknown. */
  usageUsec: number | null;
  /** Bytes it may still allocate, or `null` for no limit (or unknown). */
  memoryHeadroom: number | null;
}

/**
 * Reads the CPU quota, CPU time used and memory headroom out of one
 * directory's files (cgroup v2 or v1). Missing files limit nothing.
 *
 * @throws {SyntaxError} when a file is present but unparsable.
 */
export function cgroupLimits(files: CgroupFiles): CgroupLimits {
  if (files.version === 2) {
    const cpus = files.cpuMax === undefined ? null : parseCpuMax(files.cpuMax);
    return {
      cpus,
      // Only read with a quota: the root cgroup's cpu.stat has no use here.
      usageUsec: cpus === null || files.cpuStat === undefined
        ? null
        : parseCpuStatUsage(files.cpuStat),
      memoryHeadroom:
        files.memoryMax === undefined || files.memoryCurrent === undefined
          ? null
          : cgroupMemoryHeadroom(
            files.memoryMax,
            files.memoryCurrent,
            files.memoryStat,
          ),
    };
  }
  const cpus = files.cfsQuota === undefined || files.cfsPeriod === undefined
    ? null
    : parseCfsQuota(files.cfsQuota, files.cfsPeriod);
  return {
    cpus,
    usageUsec: cpus === null || files.cpuacctUsage === undefined
      ? null
      : bytes(files.cpuacctUsage, "cpuacct.usage") / 1000,
    memoryHeadroom:
      files.memoryLimit === undefined || files.memoryUsage === undefined
        ? null
        : cgroupV1MemoryHeadroom(
          files.memoryLimit,
          files.memoryUsage,
          files.memoryStat,
        ),
  };
}
