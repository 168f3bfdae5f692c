/**
 * Provisioning exactly as an operator does it: `i6pnctl` subprocesses with
 * `--json`, against the run's NATS. `region add`, `workspace create`,
 * `endpoint add` (which hands out the address), `endpoint remove`.
 *
 * The binary: $I6PNCTL if set (e.g. `dist/controller/cli.js` after `make
 * build`), else controller/cli.ts through tsx, so a test always runs the
 * controller of the tree it tests.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { mapLimit, run, startProcess } from './exec.js';
import { type Endpoint, type EndpointSpec, type Topology, endpointIfname, regionOf } from './topology.js';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

export function ctlArgv(): string[] {
  const bin = process.env.I6PNCTL;
  if (bin) return bin.endsWith('.js') || bin.endsWith('.ts') ? [process.execPath, ...(bin.endsWith('.ts') ? ['--import=tsx'] : []), bin] : [bin];
  return [process.execPath, '--import=tsx', join(REPO_ROOT, 'controller/cli.ts')];
}

export function controllerAvailable(): boolean {
  return existsSync(join(REPO_ROOT, 'controller/cli.ts')) || Boolean(process.env.I6PNCTL);
}

interface EndpointJson {
  address: string;
  workspace: string;
  region: string;
  node: string;
  ifname: string;
  i6pn: boolean;
}

/** A tunnel as `i6pnctl tunnel list --json` shows it. */
export interface TunnelJson {
  id: string;
  endpoint: string;
  port: number;
  tls: boolean;
  public: Array<{ gateway: string; publicAddress: string; port: number; stale: boolean }>;
}

export class Ctl {
  /** Every provisioning command run (run()), for the demo to show and for debugging. */
  readonly history: string[] = [];

  constructor(
    readonly natsUrl: string,
    private readonly bin: readonly string[] = ctlArgv(),
    /** Global flags before every command (e.g. `--kv-replicas 3` on a NATS cluster). */
    private readonly globalArgs: readonly string[] = [],
  ) {}

  async run(args: readonly string[]): Promise<unknown> {
    const argv = [...this.bin, '--nats', this.natsUrl, ...this.globalArgs, ...args, '--json'];
    this.history.push(`i6pnctl ${args.join(' ')}`);
    const r = await run(argv, { cwd: REPO_ROOT, timeoutMs: 60_000 });
    try {
      return JSON.parse(r.stdout) as unknown;
    } catch {
      throw new Error(`i6pnctl ${args.join(' ')}: output is not JSON: ${r.stdout.slice(0, 200)}`);
    }
  }

  /** A command whose output is text (or JSON lines): its stdout and exit status. */
  async text(args: readonly string[]): Promise<{ stdout: string; code: number }> {
    const r = await run([...this.bin, '--nats', this.natsUrl, ...this.globalArgs, ...args], { cwd: REPO_ROOT, timeoutMs: 60_000, allowFail: true });
    if (r.code > 1) throw new Error(`i6pnctl ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
    return { stdout: r.stdout, code: r.code };
  }

  /** A command that runs until interrupted (`observe`). */
  start(args: readonly string[]): ChildProcess {
    return startProcess([...this.bin, '--nats', this.natsUrl, ...this.globalArgs, ...args], { cwd: REPO_ROOT });
  }

  /** How an operator would type it here (the binary this Ctl runs). */
  commandLine(args: readonly string[]): string {
    const bin = this.bin.map((a) => (a.startsWith(REPO_ROOT) ? a.slice(REPO_ROOT.length) : a)).map((a) => (a === process.execPath ? 'node' : a));
    return [...bin, '--nats', `'${this.natsUrl}'`, ...args].join(' ');
  }

  async regionAdd(name: string): Promise<void> {
    await this.run(['region', 'add', name]);
  }

  async workspaceCreate(name: string): Promise<void> {
    await this.run(['workspace', 'create', name]);
  }

  /** Registers the endpoint; the address is i6pnctl's. */
  async endpointAdd(spec: EndpointSpec, region: string): Promise<Endpoint> {
    const ifname = endpointIfname(spec.name);
    const args = ['endpoint', 'add', '--workspace', spec.workspace, '--region', region, '--node', spec.node, '--ifname', ifname];
    if (!spec.i6pn) args.push('--no-i6pn');
    const e = (await this.run(args)) as EndpointJson;
    if (typeof e.address !== 'string' || e.ifname !== ifname || e.node !== spec.node || e.i6pn !== spec.i6pn) {
      throw new Error(`i6pnctl endpoint add returned ${JSON.stringify(e)}`);
    }
    return { ...spec, region, address: e.address, ifname };
  }

  async endpointRemove(address: string): Promise<void> {
    await this.run(['endpoint', 'remove', address]);
  }

  /** Registers a tunnel gateway of `region` on `node`; its address and interface name are i6pnctl's. */
  async gatewayAdd(region: string, node: string): Promise<{ address: string; ifname: string }> {
    const g = (await this.run(['gateway', 'add', '--region', region, '--node', node])) as { address: string; ifname: string; role?: string };
    if (typeof g.address !== 'string' || g.role !== 'gateway') throw new Error(`i6pnctl gateway add returned ${JSON.stringify(g)}`);
    return { address: g.address, ifname: g.ifname };
  }

  /** `tunnel create`; `wait`: until a gateway serves it (seconds). Returns the tunnel with where it is served. */
  async tunnelCreate(endpoint: string, port: number, opts: { tls?: boolean; wait?: number } = {}): Promise<TunnelJson> {
    const args = ['tunnel', 'create', '--endpoint', endpoint, '--port', String(port)];
    if (opts.tls) args.push('--tls');
    if (opts.wait !== undefined) args.push('--wait', String(opts.wait));
    return (await this.run(args)) as TunnelJson;
  }

  async tunnelRemove(id: string): Promise<void> {
    await this.run(['tunnel', 'remove', id]);
  }

  async tunnelList(): Promise<TunnelJson[]> {
    return ((await this.run(['tunnel', 'list'])) as { tunnels: TunnelJson[] }).tunnels;
  }

  /** A whole topology: regions, workspaces, then every endpoint (a few i6pnctl at a time). */
  async provision(t: Topology): Promise<Endpoint[]> {
    await mapLimit(t.regions, 4, (r) => this.regionAdd(r));
    await mapLimit(t.workspaces, 4, (w) => this.workspaceCreate(w));
    return mapLimit(t.endpoints, 4, (e) => this.endpointAdd(e, regionOf(t, e.node)));
  }
}
