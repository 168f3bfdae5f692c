/**
 * Network namespaces and processes for the benches: every name carries the
 * prefix `i6b<pid>` so two runs never collide, and everything made here is
 * removed at exit, on an error and on SIGINT/SIGTERM. Commands run through
 * the fabric's toolkit (test/fabric/exec.ts), synchronously.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { inNetns, runSync } from '../../test/fabric/exec.js';

export const PREFIX = `i6b${process.pid}`;

const namespaces = new Set<string>();
const children = new Set<ChildProcess>();
const cleanups: (() => void)[] = [];
let hooked = false;

/** Run a command, throw with its stderr on failure; returns stdout. */
export function sh(argv: readonly string[], opts: { input?: string; allowFail?: boolean } = {}): string {
  return runSync(argv, opts).stdout;
}

/** `sh` inside a namespace. */
export function nsSh(ns: string, argv: readonly string[], opts: { input?: string; allowFail?: boolean } = {}): string {
  return runSync(argv, { ...opts, netns: ns }).stdout;
}

/** A new namespace `<prefix>-<name>` with loopback up. */
export function addNs(name: string): string {
  hookExit();
  const ns = `${PREFIX}-${name}`;
  sh(['ip', 'netns', 'add', ns]);
  namespaces.add(ns);
  nsSh(ns, ['ip', 'link', 'set', 'lo', 'up']);
  return ns;
}

export function delNs(ns: string): void {
  sh(['ip', 'netns', 'del', ns], { allowFail: true });
  namespaces.delete(ns);
}

/** A veth pair `a` in `nsA`, `b` in `nsB`, both up. */
export function addVeth(nsA: string, a: string, nsB: string, b: string, opts: { mtu?: number } = {}): void {
  nsSh(nsA, ['ip', 'link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', nsB]);
  for (const [ns, dev] of [[nsA, a], [nsB, b]] as const) {
    if (opts.mtu) nsSh(ns, ['ip', 'link', 'set', dev, 'mtu', String(opts.mtu)]);
    nsSh(ns, ['ip', 'link', 'set', dev, 'up']);
  }
}

export function ifindex(ns: string, dev: string): number {
  const j = JSON.parse(nsSh(ns, ['ip', '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[];
  return j[0]!.ifindex;
}

export function mac(ns: string, dev: string): Uint8Array {
  const j = JSON.parse(nsSh(ns, ['ip', '-j', 'link', 'show', 'dev', dev])) as { address: string }[];
  return Uint8Array.from(j[0]!.address.split(':').map((h) => parseInt(h, 16)));
}

/** Start a long-lived process (in a namespace, unless ns is null); killed at exit and when this process dies. */
export function spawnIn(ns: string | null, argv: readonly string[], opts: { stdio?: 'pipe' | 'inherit' | 'ignore'; env?: NodeJS.ProcessEnv } = {}): ChildProcess {
  hookExit();
  // The parent-death signal takes the child (and what it execs) down with this process, even on SIGKILL.
  const full = ['setpriv', '--pdeathsig', 'KILL', ...inNetns(ns ?? undefined, argv)];
  const child = spawn(full[0]!, full.slice(1), { stdio: opts.stdio ?? 'pipe', env: opts.env ?? process.env });
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** utime + stime of a process, in seconds (NaN once it is gone). */
export function cpuSeconds(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return NaN;
  }
}

/**
 * Run a bench's own script again inside `ns` (I6PN_BENCH_IN_NS=1 and `env`
 * set), wait for it, clean up, and exit with its status when it failed.
 */
export async function rerunInside(ns: string, script: string, env: Record<string, string>): Promise<void> {
  const child = spawnIn(ns, [process.execPath, '--import=tsx', script], { stdio: 'inherit', env: { ...process.env, I6PN_BENCH_IN_NS: '1', ...env } });
  const code = await new Promise<number>((res) => child.on('exit', (c) => res(c ?? 1)));
  cleanup();
  if (code !== 0) process.exit(code);
}

/** A bench's entry point: `inside` when re-run in its namespace (rerunInside), else `outside`; an error cleans up and exits 1. */
export function benchMain(inside: () => Promise<void>, outside: () => Promise<void>): void {
  (process.env.I6PN_BENCH_IN_NS ? inside() : outside()).catch((err: unknown) => {
    console.error(err);
    cleanup();
    process.exit(1);
  });
}

/** Something else to undo at exit (run in reverse order of registration). */
export function onCleanup(fn: () => void): void {
  hookExit();
  cleanups.push(fn);
}

export function cleanup(): void {
  for (const c of children) {
    if (c.exitCode === null && c.pid) {
      try {
        c.kill('SIGKILL');
      } catch {
        /* already gone */
      }
    }
  }
  children.clear();
  while (cleanups.length) {
    try {
      cleanups.pop()!();
    } catch {
      /* best effort at exit */
    }
  }
  for (const ns of [...namespaces]) delNs(ns);
}

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', cleanup);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      cleanup();
      process.exit(130);
    });
  }
}

/** Namespaces a killed earlier run left behind (its pid is gone). */
export function sweepStale(): void {
  let names: string[] = [];
  try {
    names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' }).split('\n').map((l) => l.split(' ')[0]!).filter(Boolean);
  } catch {
    return;
  }
  for (const n of names) {
    const m = /^i6b(\d+)-/.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    let alive = true;
    try {
      process.kill(pid, 0);
    } catch {
      alive = false;
    }
    if (!alive) sh(['ip', 'netns', 'del', n], { allowFail: true });
  }
}


