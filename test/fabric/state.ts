/**
 * The record of everything a fabric run creates, and its removal.
 *
 * Every run has a short random id; every network namespace is named
 * `i6pn-<id>-…`, the one link in the root namespace `i6pn<id>`, pins live under
 * `/sys/fs/bpf/i6pn-<id>-<node>`, and files under `/run/i6pn-fabric/<id>/`,
 * where `state.json` lists what exists (written as each thing is made). Removal
 * is synchronous on purpose: it runs from `exit` and signal handlers too, and
 * it is idempotent, so a half-built run is removed as well as a whole one.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

export const STATE_ROOT = '/run/i6pn-fabric';
export const NETNS_PREFIX = 'i6pn-';

export interface RecordedProcess {
  pid: number;
  what: string;
  /** A string that /proc/<pid>/cmdline must contain before we signal it (guards against pid reuse). */
  cmdlineMark: string;
}

export interface RunState {
  runId: string;
  /** The process that owns the run; a run whose owner died is a leftover, unless detached. */
  ownerPid: number;
  /** Left running on purpose (the demo) until `demo.sh down`. */
  detached: boolean;
  createdAt: string;
  netns: string[];
  rootLinks: string[];
  processes: RecordedProcess[];
  bpffsDirs: string[];
  /** Free-form facts for `demo.sh` and people (addresses, URLs, topology). */
  info: Record<string, unknown>;
}

export function newRunId(): string {
  for (;;) {
    const id = randomBytes(2).toString('hex');
    if (!existsSync(join(STATE_ROOT, id)) && !listNetns().some((n) => n.startsWith(`${NETNS_PREFIX}${id}-`))) return id;
  }
}

export function runDir(runId: string): string {
  return join(STATE_ROOT, runId);
}

export class RunRecord {
  readonly state: RunState;
  readonly dir: string;

  constructor(runId: string, detached = false) {
    this.dir = runDir(runId);
    mkdirSync(this.dir, { recursive: true });
    this.state = {
      runId,
      ownerPid: process.pid,
      detached,
      createdAt: new Date().toISOString(),
      netns: [],
      rootLinks: [],
      processes: [],
      bpffsDirs: [],
      info: {},
    };
    this.save();
  }

  save(): void {
    writeFileSync(join(this.dir, 'state.json'), JSON.stringify(this.state, null, 2) + '\n');
  }

  addNetns(name: string): void {
    this.state.netns.push(name);
    this.save();
  }
  addRootLink(name: string): void {
    this.state.rootLinks.push(name);
    this.save();
  }
  addProcess(p: RecordedProcess): void {
    this.state.processes.push(p);
    this.save();
  }
  removeProcess(pid: number): void {
    this.state.processes = this.state.processes.filter((p) => p.pid !== pid);
    this.save();
  }
  addBpffsDir(path: string): void {
    if (!this.state.bpffsDirs.includes(path)) this.state.bpffsDirs.push(path);
    this.save();
  }
  setInfo(key: string, value: unknown): void {
    this.state.info[key] = value;
    this.save();
  }
}

export function listNetns(): string[] {
  try {
    return readdirSync('/run/netns');
  } catch {
    return [];
  }
}

export function readRunState(runId: string): RunState | undefined {
  try {
    return JSON.parse(readFileSync(join(runDir(runId), 'state.json'), 'utf8')) as RunState;
  } catch {
    return undefined;
  }
}

export function listRuns(): string[] {
  try {
    return readdirSync(STATE_ROOT).filter((d) => /^[0-9a-f]{4}$/.test(d));
  } catch {
    return [];
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function cmdline(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' ');
  } catch {
    return undefined;
  }
}

/** Pids of every process whose network namespace is `netns` (what `ip netns pids` reports). */
function netnsPids(netns: string): number[] {
  try {
    return execFileSync('ip', ['netns', 'pids', netns], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split(/\s+/)
      .filter(Boolean)
      .map(Number)
      .filter((p) => p !== process.pid);
  } catch {
    return [];
  }
}

function killAndWait(pids: number[]): void {
  const live = pids.filter(alive);
  for (const p of live) {
    try {
      process.kill(p, 'SIGTERM');
    } catch {
      /* gone */
    }
  }
  const deadline = Date.now() + 3000;
  while (live.some(alive) && Date.now() < deadline) execFileSync('sleep', ['0.05']);
  for (const p of live.filter(alive)) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
}

/** Where `ip netns exec NS` finds files to bind over /etc (resolv.conf): /etc/netns/NS. */
export function netnsConfigDir(netns: string): string {
  return join('/etc/netns', netns);
}

/**
 * Remove everything of one run: its processes (recorded ones whose cmdline
 * still matches, and any process inside its namespaces), its namespaces (which
 * takes their veths with them), its root-namespace link, its pins and files.
 * Namespaces named with the run's prefix are found even if the record missed them.
 */
export function destroyRunSync(runId: string): void {
  const state = readRunState(runId);
  const prefix = `${NETNS_PREFIX}${runId}-`;
  const netns = [...new Set([...(state?.netns ?? []), ...listNetns().filter((n) => n.startsWith(prefix))])];

  const pids = new Set<number>();
  for (const p of state?.processes ?? []) {
    const cl = cmdline(p.pid);
    if (cl !== undefined && cl.includes(p.cmdlineMark)) pids.add(p.pid);
  }
  for (const n of netns) for (const p of netnsPids(n)) pids.add(p);
  killAndWait([...pids]);

  // The containers' /etc/netns/<ns> (resolv.conf) goes with their namespaces.
  for (const n of netns) rmSync(netnsConfigDir(n), { recursive: true, force: true });
  if (netns.length > 0) {
    execFileSync('ip', ['-force', '-batch', '-'], {
      input: netns.map((n) => `netns del ${n}`).join('\n') + '\n',
      stdio: ['pipe', 'ignore', 'ignore'],
    });
  }
  for (const link of [...(state?.rootLinks ?? []), `i6pn${runId}`]) {
    try {
      execFileSync('ip', ['link', 'del', link], { stdio: 'ignore' });
    } catch {
      /* already gone with its peer's namespace */
    }
  }
  const bpffs = new Set(state?.bpffsDirs ?? []);
  try {
    for (const d of readdirSync('/sys/fs/bpf')) if (d.startsWith(prefix)) bpffs.add(join('/sys/fs/bpf', d));
  } catch {
    /* no bpffs mounted */
  }
  for (const d of bpffs) rmSync(d, { recursive: true, force: true });
  // Keep the logs (agents, NATS, Prometheus) of a removed run where asked: I6PN_FABRIC_LOGS=/some/dir.
  const keep = process.env.I6PN_FABRIC_LOGS;
  if (keep && existsSync(join(runDir(runId), 'logs'))) {
    try {
      cpSync(join(runDir(runId), 'logs'), join(keep, runId), { recursive: true });
    } catch {
      /* best effort */
    }
  }
  rmSync(runDir(runId), { recursive: true, force: true });
}

/**
 * Runs that nobody owns any more: the owner died and the run was not detached,
 * or the record is gone but namespaces with the prefix remain. `includeDetached`
 * adds the demo's runs (what `demo.sh down` removes).
 */
export function leftoverRuns(includeDetached: boolean): string[] {
  const ids = new Set<string>(listRuns());
  // A run's signature is its fabric namespace: other tools' `i6pn-…` namespaces are not ours.
  for (const n of listNetns()) {
    const m = /^i6pn-([0-9a-f]{4})-fabric$/.exec(n);
    if (m?.[1]) ids.add(m[1]);
  }
  return [...ids].filter((id) => {
    const s = readRunState(id);
    if (!s) return true;
    if (s.detached) return includeDetached;
    return !alive(s.ownerPid);
  });
}

const LOCK_DIR = join(STATE_ROOT, 'e2e.lock');

/**
 * One heavy fabric test at a time on this machine: ava runs test files in
 * parallel, and four agents, Prometheus and a hundred probes per second in
 * each of three files at once would measure the machine, not i6pn (the
 * "within a second" checks most of all). A directory is the lock (atomic
 * mkdir); a lock whose owner died is taken over.
 */
export async function acquireFabricLock(timeoutMs = 15 * 60_000): Promise<() => void> {
  mkdirSync(STATE_ROOT, { recursive: true });
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(LOCK_DIR);
      writeFileSync(join(LOCK_DIR, 'pid'), String(process.pid));
      let held = true;
      const release = (): void => {
        if (!held) return;
        held = false;
        process.off('exit', release);
        rmSync(LOCK_DIR, { recursive: true, force: true });
      };
      process.once('exit', release);
      return release;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let owner = NaN;
    try {
      owner = Number(readFileSync(join(LOCK_DIR, 'pid'), 'utf8'));
    } catch {
      /* being written or removed */
    }
    if (Number.isInteger(owner) && owner > 0 && !alive(owner)) rmSync(LOCK_DIR, { recursive: true, force: true });
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for ${LOCK_DIR} (held by pid ${owner})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}
