/**
 * A one-node environment for the agent's tests: a node network namespace
 * with an uplink, container namespaces joined to it by veth pairs (the
 * runtime's job, played here), a management link from the root namespace
 * (where nats-server and the test run) into the node, and the agent run as a
 * subprocess inside the node namespace with nsenter (not `ip netns exec`,
 * which would hide /sys/fs/bpf).
 *
 * Names carry the test process id, so two runs cannot collide; destroy()
 * removes namespaces, links, pins and processes.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { join } from 'node:path';
import { abiStructs, readPinnedConfig, readPinnedEndpoint, readPinnedEndpoints, readPinnedLocalIfaces, writePinnedLocalIface } from './agent-maps.js';
import { REPO_ROOT } from './nats.js';

export { abiStructs, readPinnedConfig, readPinnedEndpoint, readPinnedEndpoints, readPinnedLocalIfaces, writePinnedLocalIface };

export interface Sh {
  code: number;
  stdout: string;
  stderr: string;
}

export function sh(argv: string[], opts: { allowFail?: boolean; timeoutMs?: number; input?: string } = {}): Promise<Sh> {
  return new Promise((resolve, reject) => {
    const p = execFile(argv[0]!, argv.slice(1), { timeout: opts.timeoutMs ?? 30_000, maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      const r = { code, stdout, stderr };
      if (code !== 0 && !opts.allowFail) reject(new Error(`${argv.join(' ')} failed (${code}): ${stderr || stdout}`));
      else resolve(r);
    });
    if (opts.input !== undefined) p.stdin?.end(opts.input);
  });
}

/** argv run inside a named network namespace (nsenter keeps the host's /sys). */
export const inNs = (ns: string, argv: string[]): string[] => ['nsenter', `--net=/run/netns/${ns}`, '--', ...argv];

export interface Container {
  name: string;
  netns: string;
  /** Host-side veth name in the node namespace. */
  ifname: string;
  address: string;
}

export class AgentEnv {
  readonly id = String(process.pid);
  readonly nodeNs: string;
  readonly bpffs: string;
  /** Root side of the management link and its address (NATS listens here). */
  readonly mgmtRoot: string;
  readonly mgmtRootAddr: string;
  /** The node's address on the management link (the agent's metrics listen here). */
  readonly mgmtNodeAddr: string;
  /** A second root-side address, the agent's way to NATS: a prohibit route to it cuts the agent off alone. */
  readonly natsAddr: string;
  readonly uplink = 'up0';
  readonly metricsPort = 9465;
  readonly containers = new Map<string, Container>();
  private readonly netnses: string[] = [];
  private readonly agents = new Set<AgentProcess>();

  constructor(readonly tag: string) {
    const hex = (process.pid & 0xffff).toString(16);
    // Two environments of one test process differ by their tag's first letter (links and addresses).
    const t = tag.charCodeAt(0).toString(16);
    this.nodeNs = `i6pn-at-${this.id}-${tag}`;
    this.bpffs = `/sys/fs/bpf/i6pn-test-${this.id}-${tag}`;
    this.mgmtRoot = `i6at${t}${this.id}`.slice(0, 15);
    this.mgmtRootAddr = `fd6a:${hex}:${t}::1`;
    this.mgmtNodeAddr = `fd6a:${hex}:${t}::2`;
    // Outside the management /64, so that the root namespace never picks it as the source of a scrape.
    this.natsAddr = `fd6a:${hex}:${t}:ffff::3`;
  }

  get metricsUrl(): string {
    return `http://[${this.mgmtNodeAddr}]:${this.metricsPort}`;
  }

  private async addNs(name: string): Promise<void> {
    await sh(['ip', 'netns', 'add', name]);
    this.netnses.push(name);
    await sh(['ip', '-n', name, 'link', 'set', 'lo', 'up']);
    for (const k of ['all.accept_dad=0', 'default.accept_dad=0', 'all.accept_ra=0', 'default.accept_ra=0', 'all.keep_addr_on_down=1']) {
      await sh(inNs(name, ['sysctl', '-q', '-w', `net.ipv6.conf.${k}`]));
    }
  }

  async create(): Promise<void> {
    await this.addNs(this.nodeNs);
    await sh(inNs(this.nodeNs, ['sysctl', '-q', '-w', 'net.ipv6.conf.all.forwarding=1']));
    // The uplink: a veth pair inside the node (XDP needs an interface; traffic here comes from the endpoints).
    await sh(['ip', '-n', this.nodeNs, 'link', 'add', this.uplink, 'type', 'veth', 'peer', 'name', 'up0peer']);
    await sh(['ip', '-n', this.nodeNs, 'link', 'set', this.uplink, 'up']);
    await sh(['ip', '-n', this.nodeNs, 'link', 'set', 'up0peer', 'up']);
    // Management link: root ↔ node.
    await sh(['ip', 'link', 'add', this.mgmtRoot, 'type', 'veth', 'peer', 'name', 'mgmt', 'netns', this.nodeNs]);
    await sh(['sysctl', '-q', '-w', `net.ipv6.conf.${this.mgmtRoot}.accept_dad=0`]);
    await sh(['ip', 'addr', 'add', `${this.mgmtRootAddr}/64`, 'dev', this.mgmtRoot, 'nodad']);
    await sh(['ip', 'addr', 'add', `${this.natsAddr}/128`, 'dev', this.mgmtRoot, 'nodad']);
    await sh(['ip', 'link', 'set', this.mgmtRoot, 'up']);
    await sh(['ip', '-n', this.nodeNs, 'addr', 'add', `${this.mgmtNodeAddr}/64`, 'dev', 'mgmt', 'nodad']);
    await sh(['ip', '-n', this.nodeNs, 'link', 'set', 'mgmt', 'up']);
    await this.blockNats(false);
  }

  /** Play the runtime: a container namespace and its veth pair (the address comes with setAddress). */
  async addContainer(name: string, ifname: string): Promise<Container> {
    const netns = `i6pn-at-${this.id}-${this.tag}-c${name}`;
    await this.addNs(netns);
    await sh(['ip', 'link', 'add', ifname, 'netns', this.nodeNs, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    await sh(['ip', '-n', this.nodeNs, 'addr', 'add', 'fe80::1/64', 'dev', ifname, 'nodad']);
    await sh(['ip', '-n', this.nodeNs, 'link', 'set', ifname, 'up']);
    await sh(['ip', '-n', netns, 'link', 'set', 'eth0', 'up']);
    await sh(['ip', '-n', netns, '-6', 'route', 'replace', 'default', 'via', 'fe80::1', 'dev', 'eth0']);
    const c = { name, netns, ifname, address: '' };
    this.containers.set(name, c);
    return c;
  }

  /** The container's private address (replacing the one it had). */
  async setAddress(name: string, address: string): Promise<void> {
    const c = this.containers.get(name)!;
    if (c.address) await sh(['ip', '-n', c.netns, 'addr', 'del', `${c.address}/128`, 'dev', 'eth0'], { allowFail: true });
    await sh(['ip', '-n', c.netns, 'addr', 'add', `${address}/128`, 'dev', 'eth0', 'nodad']);
    await sh(['ip', '-n', c.netns, '-6', 'route', 'replace', 'default', 'via', 'fe80::1', 'dev', 'eth0']);
    c.address = address;
  }

  /** The container goes: its namespace, and with it the veth pair. */
  async removeContainer(name: string): Promise<void> {
    const c = this.containers.get(name);
    if (!c) return;
    await sh(['ip', 'netns', 'del', c.netns], { allowFail: true });
    this.containers.delete(name);
  }

  /** ping from a container; true when the echo came back. */
  async ping(from: string, to: string, opts: { count?: number; interval?: number; wait?: number } = {}): Promise<{ ok: boolean; out: string }> {
    const c = this.containers.get(from)!;
    const r = await sh(
      inNs(c.netns, ['ping', '-6', '-n', '-q', '-c', String(opts.count ?? 1), '-i', String(opts.interval ?? 0.2), '-W', String(opts.wait ?? 1), to]),
      { allowFail: true, timeoutMs: 60_000 },
    );
    return { ok: r.code === 0, out: r.stdout + r.stderr };
  }

  async ifindex(ifname: string): Promise<number | null> {
    const r = await sh(['ip', '-n', this.nodeNs, '-j', 'link', 'show', 'dev', ifname], { allowFail: true });
    if (r.code !== 0) return null;
    return (JSON.parse(r.stdout) as Array<{ ifindex: number }>)[0]?.ifindex ?? null;
  }

  /** TC filters on a node interface: the program names at i6pn's slot, per direction. */
  async tcPrograms(ifname: string): Promise<{ ingress: string | null; egress: string | null }> {
    const one = async (dir: string): Promise<string | null> => {
      const r = await sh(['tc', '-n', this.nodeNs, 'filter', 'show', 'dev', ifname, dir], { allowFail: true });
      const m = /handle 0x1e6 (\w+):\[\d+\]/.exec(r.stdout);
      return m ? m[1]! : null;
    };
    return { ingress: await one('ingress'), egress: await one('egress') };
  }

  /** /128 routes of the node to fdaa addresses: address → dev. */
  async routes(): Promise<Map<string, string>> {
    const r = await sh(['ip', '-n', this.nodeNs, '-j', '-6', 'route', 'show']);
    const out = new Map<string, string>();
    for (const x of JSON.parse(r.stdout) as Array<{ dst: string; dev: string }>) if (x.dst.startsWith('fdaa:')) out.set(x.dst.replace(/\/128$/, ''), x.dev);
    return out;
  }

  /** The XDP program name on the uplink, or null. */
  async xdpProgram(): Promise<string | null> {
    const r = await sh(['ip', '-n', this.nodeNs, '-j', '-d', 'link', 'show', 'dev', this.uplink]);
    const l = (JSON.parse(r.stdout) as Array<{ xdp?: { prog?: { name?: string }; attached?: Array<{ prog?: { name?: string } }> } }>)[0];
    return l?.xdp?.prog?.name ?? l?.xdp?.attached?.[0]?.prog?.name ?? null;
  }

  /** Cut the agent off from NATS (ICMP prohibited: its reconnects fail at once), or reconnect it. */
  async blockNats(on: boolean): Promise<void> {
    await sh(['ip', '-n', this.nodeNs, '-6', 'route', 'replace', ...(on ? ['prohibit', `${this.natsAddr}/128`] : [`${this.natsAddr}/128`, 'dev', 'mgmt'])]);
  }

  startAgent(args: string[], env: Record<string, string> = {}): AgentProcess {
    const a = new AgentProcess(this, args, env);
    this.agents.add(a);
    a.exited.then(() => this.agents.delete(a));
    return a;
  }

  /** The agent's argv for this node. */
  agentArgs(natsUrl: string, over: Record<string, string> = {}): string[] {
    const flags: Record<string, string> = {
      '--nats': natsUrl,
      '--node': 'n1',
      '--region': 'ams',
      '--uplink': this.uplink,
      // The XDP life cycle (pinned link, adoption, upgrade) is what these tests follow; auto (TC on a veth) has a test of its own.
      '--uplink-hook': 'xdp',
      '--bpffs': this.bpffs,
      '--metrics-addr': `[${this.mgmtNodeAddr}]:${this.metricsPort}`,
      '--reconcile-interval': '300',
      '--heartbeat-interval': '1',
      '--rescan-interval': '2',
      ...over,
    };
    return Object.entries(flags).flatMap(([k, v]) => [k, v]);
  }

  async destroy(): Promise<void> {
    for (const a of this.agents) a.kill('SIGKILL');
    await Promise.all([...this.agents].map((a) => a.exited));
    if (existsSync(this.bpffs)) {
      await sh(inNs(this.nodeNs, [process.execPath, '--import=tsx', join(REPO_ROOT, 'agent', 'main.ts'), 'teardown', '--bpffs', this.bpffs]), {
        allowFail: true,
      });
      rmSync(this.bpffs, { recursive: true, force: true });
    }
    for (const ns of this.netnses.reverse()) await sh(['ip', 'netns', 'del', ns], { allowFail: true });
    await sh(['ip', 'link', 'del', this.mgmtRoot], { allowFail: true });
  }
}

/** A log line of the agent (pino JSON). */
export type LogLine = Record<string, unknown> & { msg?: string; level?: string };

export class AgentProcess {
  readonly proc: ChildProcess;
  readonly logs: LogLine[] = [];
  stderr = '';
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private waiters: Array<{ pred: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];

  constructor(
    readonly env: AgentEnv,
    args: string[],
    extraEnv: Record<string, string>,
  ) {
    this.proc = spawn('nsenter', [`--net=/run/netns/${env.nodeNs}`, '--', process.execPath, '--import=tsx', 'agent/main.ts', ...args], {
      cwd: REPO_ROOT,
      env: { ...process.env, ...extraEnv },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    createInterface({ input: this.proc.stdout! }).on('line', (line) => {
      let l: LogLine;
      try {
        l = JSON.parse(line) as LogLine;
      } catch {
        l = { msg: line, level: 'raw' };
      }
      this.logs.push(l);
      this.waiters = this.waiters.filter((w) => {
        if (!w.pred(l)) return true;
        w.resolve(l);
        return false;
      });
    });
    this.proc.stderr!.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
  }

  /** The first log line (past or future) matching pred. */
  waitLog(pred: (l: LogLine) => boolean, timeoutMs = 20_000): Promise<LogLine> {
    const past = this.logs.find(pred);
    if (past) return Promise.resolve(past);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`agent log: no matching line in ${timeoutMs} ms; last lines:\n${this.logs.slice(-15).map((l) => JSON.stringify(l)).join('\n')}\n${this.stderr}`)), timeoutMs);
      this.waiters.push({
        pred,
        resolve: (l) => {
          clearTimeout(t);
          resolve(l);
        },
      });
    });
  }

  kill(signal: NodeJS.Signals): void {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill(signal);
  }
}

/** Poll until fn returns a truthy value (or throw with the last value). */
export async function eventually<T>(fn: () => Promise<T> | T, what: string, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  let lastErr: unknown;
  while (Date.now() < deadline) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      lastErr = err;
    }
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}; last value ${JSON.stringify(last)}${lastErr ? `; last error ${String(lastErr)}` : ''}`);
}

/** Prometheus text format → samples. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parseMetrics(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ');
      types.set(name!, type!);
      continue;
    }
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    if (m[3]) for (const lm of m[3].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]!] = lm[2]!;
    samples.push({ name: m[1]!, labels, value: Number(m[4]) });
  }
  return { samples, types };
}

export function metricValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v));
  if (s.length === 0) throw new Error(`no sample ${name}${JSON.stringify(labels)}`);
  return s.reduce((a, x) => a + x.value, 0);
}
