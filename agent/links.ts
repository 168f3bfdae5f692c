/**
 * The node's interfaces and routes, through iproute2 (`ip`): the one module
 * that runs it. It runs in the agent's network namespace, which is the node's.
 *
 * Interfaces: a full scan (`ip -d -j link show`) at start, again after every
 * `ip -o monitor link` event (debounced) and periodically, so a lost event or a
 * monitor that died cannot hide an interface for long. Each interface is known
 * by name, ifindex and kind (`veth`, `netkit`, … from linkinfo; '' for a
 * physical NIC or loopback). Listeners learn when the table changed.
 *
 * Routes: the /128 of each local endpoint to its veth, tagged with the agent's
 * own route protocol number so that the agent (and teardown) can find exactly
 * the routes it made.
 *
 * Addresses: the node resolver's (fdaa::53) on the loopback device, where
 * every container reaches it through its own veth and the node's routing.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import type { Logger } from './log.js';

/** rtnetlink protocol of the agent's routes (`proto 105` in `ip route`), unused by routing daemons. */
export const ROUTE_PROTO = 105;

export class IpError extends Error {
  constructor(
    readonly args: readonly string[],
    readonly stderr: string,
    readonly code: number | string | null,
  ) {
    super(`ip ${args.join(' ')}: ${stderr.trim() || `exit ${code}`}`);
    this.name = 'IpError';
  }
}

/** Run `ip ARGS`; resolves with stdout. */
export function ip(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { maxBuffer: 256 * 1024 * 1024, timeout: 30_000 }, (err, stdout, stderr) => {
      if (err) reject(new IpError(args, stderr, (err as NodeJS.ErrnoException).code ?? null));
      else resolve(stdout);
    });
  });
}

/** `ip -6 route replace ADDR/128 dev IFNAME proto 105`. */
export async function replaceRoute(addr: string, ifname: string): Promise<void> {
  await ip(['-6', 'route', 'replace', `${addr}/128`, 'dev', ifname, 'proto', String(ROUTE_PROTO)]);
}

/** Remove the agent's /128 to `addr`; false when there was none. */
export async function deleteRoute(addr: string): Promise<boolean> {
  try {
    await ip(['-6', 'route', 'del', `${addr}/128`, 'proto', String(ROUTE_PROTO)]);
    return true;
  } catch (err) {
    if (err instanceof IpError && /No such process|not found|Cannot find device/i.test(err.stderr)) return false;
    throw err;
  }
}

export interface AgentRoute {
  /** The endpoint address (no prefix length). */
  addr: string;
  dev: string;
}

/** The routes the agent made (proto 105) in this namespace. */
export async function listAgentRoutes(): Promise<AgentRoute[]> {
  const out = await ip(['-j', '-6', 'route', 'show', 'proto', String(ROUTE_PROTO)]);
  const rows = JSON.parse(out || '[]') as Array<{ dst?: string; dev?: string }>;
  return rows.filter((r) => r.dst && r.dev).map((r) => ({ addr: r.dst!.replace(/\/128$/, ''), dev: r.dev! }));
}

/** Remove every route the agent made (teardown). */
export async function flushAgentRoutes(): Promise<void> {
  await ip(['-6', 'route', 'flush', 'proto', String(ROUTE_PROTO)]);
}

/** Whether `addr`/128 is on the loopback device. */
export async function hasLoopbackAddress(addr: string): Promise<boolean> {
  const rows = JSON.parse((await ip(['-j', '-6', 'addr', 'show', 'dev', 'lo'])) || '[]') as Array<{ addr_info?: Array<{ local?: string; prefixlen?: number }> }>;
  return rows.some((r) => (r.addr_info ?? []).some((a) => a.local === addr && a.prefixlen === 128));
}

/**
 * Put `addr`/128 on the loopback device, if it is not there already: local
 * delivery needs only its entry in the local table, so no prefix route is
 * added to the main table (noprefixroute); nodad, or the address stays
 * tentative (bind: EADDRNOTAVAIL) until the kernel's DAD work runs, even on
 * loopback, which a loaded node delays.
 */
export async function ensureLoopbackAddress(addr: string): Promise<void> {
  if (await hasLoopbackAddress(addr)) return;
  await ip(['-6', 'addr', 'replace', `${addr}/128`, 'dev', 'lo', 'noprefixroute', 'nodad']);
}

/** Remove `addr`/128 from the loopback device (teardown); false when it was not there. */
export async function removeLoopbackAddress(addr: string): Promise<boolean> {
  if (!(await hasLoopbackAddress(addr))) return false;
  await ip(['-6', 'addr', 'del', `${addr}/128`, 'dev', 'lo']);
  return true;
}

/** The ifindex of one interface, or null. */
export async function ifindexOf(name: string): Promise<number | null> {
  try {
    const rows = JSON.parse(await ip(['-j', 'link', 'show', 'dev', name])) as Array<{ ifindex: number }>;
    return rows[0]?.ifindex ?? null;
  } catch (err) {
    if (err instanceof IpError) return null;
    throw err;
  }
}

/** The ifindex of every interface of this namespace (teardown's sweep). */
export async function interfaceIndexes(): Promise<number[]> {
  return (JSON.parse((await ip(['-j', 'link', 'show'])) || '[]') as Array<{ ifindex: number }>).map((l) => l.ifindex);
}

/** One interface of the namespace. */
export interface Link {
  ifname: string;
  ifindex: number;
  /** linkinfo.info_kind (`veth`, `netkit`, `bridge`, …); '' when the kernel gives none (a physical NIC, lo). */
  kind: string;
}

/**
 * The interfaces of this namespace by name, kept current. `onChange` runs
 * after each scan that changed the table.
 */
export class Interfaces {
  private byName = new Map<string, Link>();
  private byIndex = new Map<number, Link>();
  private monitor: ChildProcess | null = null;
  private timer: NodeJS.Timeout | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private scanning: Promise<void> | null = null;
  private again = false;
  private stopped = false;
  private readonly listeners: Array<() => void> = [];

  constructor(
    private readonly log: Logger,
    private readonly rescanMs: number,
  ) {}

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  /** First scan, then the monitor and the periodic rescan. */
  async start(): Promise<void> {
    await this.rescan();
    this.startMonitor();
    this.timer = setInterval(() => void this.rescan(), this.rescanMs);
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    if (this.debounce) clearTimeout(this.debounce);
    this.monitor?.kill('SIGTERM');
    this.monitor = null;
  }

  ifindex(name: string): number | undefined {
    return this.byName.get(name)?.ifindex;
  }

  nameOf(ifindex: number): string | undefined {
    return this.byIndex.get(ifindex)?.ifname;
  }

  /** The interface of that name, if it exists now. */
  link(name: string): Link | undefined {
    return this.byName.get(name);
  }

  /** Scan now (coalesced with a scan in flight). */
  rescan(): Promise<void> {
    if (this.scanning) {
      this.again = true;
      return this.scanning;
    }
    this.scanning = (async () => {
      do {
        this.again = false;
        await this.scanOnce();
      } while (this.again && !this.stopped);
    })().finally(() => {
      this.scanning = null;
    });
    return this.scanning;
  }

  private async scanOnce(): Promise<void> {
    let rows: Array<{ ifindex: number; ifname: string; linkinfo?: { info_kind?: string } }>;
    try {
      rows = JSON.parse(await ip(['-d', '-j', 'link', 'show'])) as typeof rows;
    } catch (err) {
      this.log.error({ err }, 'interface scan failed');
      return;
    }
    const next = new Map<string, Link>(rows.map((r) => [r.ifname, { ifname: r.ifname, ifindex: r.ifindex, kind: r.linkinfo?.info_kind ?? '' }]));
    let changed = next.size !== this.byName.size;
    if (!changed) for (const [n, l] of next) if (this.byName.get(n)?.ifindex !== l.ifindex) changed = true;
    this.byName = next;
    this.byIndex = new Map([...next.values()].map((l) => [l.ifindex, l]));
    if (changed) for (const l of this.listeners) l();
  }

  private startMonitor(): void {
    if (this.stopped) return;
    const p = spawn('ip', ['-o', 'monitor', 'link'], { stdio: ['ignore', 'pipe', 'ignore'] });
    this.monitor = p;
    createInterface({ input: p.stdout! }).on('line', () => {
      if (this.debounce) return;
      this.debounce = setTimeout(() => {
        this.debounce = null;
        void this.rescan();
      }, 20);
    });
    p.on('error', (err) => this.log.warn({ err }, '`ip monitor link` failed; relying on the periodic rescan'));
    p.on('exit', (code, signal) => {
      if (this.stopped) return;
      this.log.warn({ code, signal }, '`ip monitor link` exited; restarting it');
      setTimeout(() => this.startMonitor(), 1000).unref();
    });
  }
}
