/**
 * A NATS cluster of `size` servers (JetStream, full-mesh routes) on the
 * fabric's management address, one port triple per server (client 4222+i,
 * routes 6222+i, monitoring 8222+i): the address is unique per run, so two
 * runs never collide. Each server keeps its own store under the run dir, so a
 * killed server restarts with its RAFT logs and catches up.
 *
 * Leaders are read from the servers' monitoring endpoint (/jsz): the meta
 * leader (`meta_cluster.leader`) and a stream's leader (`stream_detail[].cluster.leader`).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { natsServerBin } from '../helpers/nats-server-bin.js';
import type { Fabric } from './fabric.js';
import { type Nats, type Service, startService, tcpOpen, waitUntil } from './services.js';

export interface NatsClusterServer {
  /** Server name (`-n`), as /jsz names leaders: `s0`, `s1`, … */
  name: string;
  index: number;
  url: string;
  clientPort: number;
  monitorUrl: string;
  service: Service | null;
}

export class NatsCluster {
  readonly servers: NatsClusterServer[];

  private constructor(
    private readonly fabric: Fabric,
    size: number,
  ) {
    const host = fabric.mgmtAddress;
    this.servers = Array.from({ length: size }, (_, i) => ({
      name: `s${i}`,
      index: i,
      clientPort: 4222 + i,
      url: `nats://[${host}]:${4222 + i}`,
      monitorUrl: `http://[${host}]:${8222 + i}`,
      service: null,
    }));
  }

  /** Every client URL, comma-separated: what `--nats` takes (agents and i6pnctl). */
  get url(): string {
    return this.servers.map((s) => s.url).join(',');
  }

  static async start(fabric: Fabric, size = 3): Promise<NatsCluster> {
    if (size < 1 || size > 5) throw new Error(`a NATS cluster of ${size} servers: 1 to 5`);
    const c = new NatsCluster(fabric, size);
    await Promise.all(c.servers.map((s) => c.startServer(s.index)));
    await c.waitForMetaLeader(30_000);
    fabric.record.setInfo('nats', c.url);
    return c;
  }

  private argv(i: number): string[] {
    const host = this.fabric.mgmtAddress;
    const dir = join(this.fabric.record.dir, 'nats-cluster', `s${i}`);
    mkdirSync(dir, { recursive: true });
    const routes = this.servers.filter((s) => s.index !== i).map((s) => `nats-route://[${host}]:${6222 + s.index}`);
    return [
      natsServerBin(), '-js', '-sd', dir,
      '-a', host, '-p', String(4222 + i), '-m', String(8222 + i),
      '-n', `s${i}`, '--cluster_name', `i6pn-${this.fabric.runId}`,
      '--cluster', `nats://[${host}]:${6222 + i}`, '--routes', routes.join(','),
    ];
  }

  /** (Re)start server `i` with its store as it was. */
  async startServer(i: number): Promise<void> {
    const s = this.server(i);
    if (s.service?.alive()) return;
    const argv = this.argv(i);
    s.service = startService(this.fabric, `nats-${s.name}`, argv, { cmdlineMark: argv[3]! });
    await waitUntil(`nats-server ${s.name} on ${s.url}`, () => tcpOpen(this.fabric.mgmtAddress, s.clientPort), 15_000, s.service);
  }

  /** SIGKILL server `i` (a crash: no leadership hand-off). */
  async killServer(i: number): Promise<void> {
    const s = this.server(i);
    const svc = s.service;
    s.service = null;
    if (!svc?.alive()) return;
    process.kill(svc.pid, 'SIGKILL');
    await svc.stop(); // reaps and forgets it (already gone)
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.servers.map((s) => this.killServer(s.index)));
  }

  async startAll(): Promise<void> {
    await Promise.all(this.servers.map((s) => this.startServer(s.index)));
  }

  server(i: number): NatsClusterServer {
    const s = this.servers[i];
    if (!s) throw new Error(`no NATS server ${i} (the cluster has ${this.servers.length})`);
    return s;
  }

  private byName(name: string): NatsClusterServer {
    const s = this.servers.find((x) => x.name === name);
    if (!s) throw new Error(`no NATS server named ${name}`);
    return s;
  }

  private async jsz(s: NatsClusterServer, query = ''): Promise<Record<string, unknown> | null> {
    if (!s.service?.alive()) return null;
    try {
      const r = await fetch(`${s.monitorUrl}/jsz${query}`, { signal: AbortSignal.timeout(2000) });
      return r.ok ? ((await r.json()) as Record<string, unknown>) : null;
    } catch {
      return null;
    }
  }

  /** The JetStream meta leader, as the live servers report it (null: none agreed on yet). */
  async metaLeader(): Promise<NatsClusterServer | null> {
    for (const s of this.servers) {
      const meta = (await this.jsz(s))?.['meta_cluster'] as { leader?: string } | undefined;
      if (meta?.leader) {
        const leader = this.servers.find((x) => x.name === meta.leader);
        if (leader?.service?.alive()) return leader;
      }
    }
    return null;
  }

  /** The leader of `stream` (a KV bucket's stream is `KV_<bucket>`), or null. */
  async streamLeader(stream: string): Promise<NatsClusterServer | null> {
    for (const s of this.servers) {
      const j = await this.jsz(s, '?streams=true&accounts=true');
      const accounts = (j?.['account_details'] as Array<{ stream_detail?: Array<{ name: string; cluster?: { leader?: string } }> }> | undefined) ?? [];
      for (const a of accounts) {
        const d = a.stream_detail?.find((x) => x.name === stream);
        if (d?.cluster?.leader) {
          const leader = this.byName(d.cluster.leader);
          if (leader.service?.alive()) return leader;
        }
      }
    }
    return null;
  }

  async waitForMetaLeader(timeoutMs: number): Promise<NatsClusterServer> {
    let leader: NatsClusterServer | null = null;
    await waitUntil('a JetStream meta leader', async () => (leader = await this.metaLeader()) !== null, timeoutMs);
    return leader!;
  }

  async waitForStreamLeader(stream: string, timeoutMs: number): Promise<NatsClusterServer> {
    let leader: NatsClusterServer | null = null;
    await waitUntil(`a leader of stream ${stream}`, async () => (leader = await this.streamLeader(stream)) !== null, timeoutMs);
    return leader!;
  }

  /** The cluster as the Cluster's `nats`: its URL list; stop() stops every server. */
  asNats(): Nats {
    const first = this.server(0);
    const self = this;
    return {
      name: 'nats-cluster',
      get pid() {
        return first.service?.pid ?? 0;
      },
      log: first.service?.log ?? '',
      url: this.url,
      alive: () => this.servers.some((s) => s.service?.alive()),
      stop: () => self.stopAll(),
    };
  }
}
