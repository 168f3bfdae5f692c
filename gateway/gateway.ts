/**
 * The gateway's listeners kept equal to its region's tunnels (the reconcile
 * shape of agent/attach.ts): a tunnel that appears gets a public port and a
 * listener, one that goes (or changes) has its listener closed and its open
 * connections ended. Ports come from --ports, and a tunnel keeps the port it
 * had (also across a restart: the gateway's last record seeds them), so
 * what `tunnel list` showed stays true. What it serves is its record in the
 * gateways bucket (GatewayRecord), written on every change and every
 * heartbeat; a failed write changes nothing it serves.
 */
import type { Tunnel } from '../agent/tunnels.js';
import type { Logger } from '../agent/log.js';
import { SCHEMA_VERSION, gatewayRecord, type GatewayRecord } from '../lib/schema.js';
import type { GatewayConfig } from './config.js';
import type { GatewayMetrics } from './metrics.js';
import { TunnelListener } from './relay.js';

export interface GatewayOptions {
  cfg: GatewayConfig;
  metrics: GatewayMetrics;
  log: Logger;
  version: string;
  /** Write the gateway's record (the store). */
  publish: (r: GatewayRecord) => Promise<void>;
  /** Ports each tunnel had before (the last record), by tunnel id. */
  previous?: ReadonlyMap<string, number>;
}

export class Gateway {
  private readonly o: GatewayOptions;
  private readonly listeners = new Map<string, TunnelListener>();
  private readonly refused = new Map<string, string>();
  /** tunnel id → port, kept while the tunnel exists (and seeded from the last record). */
  private readonly ports = new Map<string, number>();
  private readonly startedAt = new Date().toISOString();
  /** Reconciles run one at a time; the latest wanted set wins. */
  private running: Promise<void> = Promise.resolve();
  private latest: ReadonlyMap<string, Tunnel> = new Map();
  private stopped = false;

  constructor(o: GatewayOptions) {
    this.o = o;
    for (const [id, port] of o.previous ?? []) this.ports.set(id, port);
    o.metrics.setByteSource({ drainBytes: (add) => this.listeners.forEach((l) => l.drainBytes(add)) });
  }

  /** The region's tunnels now (TunnelFollower.onTunnels). */
  apply(tunnels: ReadonlyMap<string, Tunnel>): Promise<void> {
    this.latest = tunnels;
    this.running = this.running.then(() => this.reconcile()).catch((err: unknown) => this.o.log.error({ err }, 'reconciling the listeners failed'));
    return this.running;
  }

  private async reconcile(): Promise<void> {
    if (this.stopped) return;
    const { cfg, log, metrics } = this.o;
    const wanted = new Map([...this.latest.values()].map((t) => [t.record.id, t]));
    let changed = false;
    for (const [id, l] of this.listeners) {
      const t = wanted.get(id);
      // Gone, or another endpoint, port or TLS setting under the same id: close it (and its connections).
      if (t && t.key === l.tunnel.key && t.record.tls === l.tunnel.record.tls) continue;
      this.listeners.delete(id);
      await l.close();
      metrics.removeTunnel(id);
      log.info({ tunnel: id, port: l.port }, 'stopped serving a tunnel; its connections are closed');
      changed = true;
    }
    for (const id of [...this.refused.keys()]) if (!wanted.has(id)) this.refused.delete(id) && (changed = true);
    for (const id of [...this.ports.keys()]) if (!wanted.has(id) && !this.listeners.has(id)) this.ports.delete(id);
    for (const [id, t] of wanted) {
      if (this.listeners.has(id)) continue;
      if (t.record.tls && !cfg.tls) {
        if (this.refused.get(id) !== 'no TLS certificate') changed = true;
        this.refused.set(id, 'no TLS certificate');
        continue;
      }
      const listener = await this.listen(t);
      if (!listener) {
        if (this.refused.get(id) !== 'no free port') changed = true;
        this.refused.set(id, 'no free port');
        continue;
      }
      this.refused.delete(id);
      this.listeners.set(id, listener);
      metrics.addTunnel(id);
      log.info({ tunnel: id, port: listener.port, endpoint: t.record.endpoint, endpointPort: t.record.port, tls: t.record.tls }, 'serving a tunnel');
      changed = true;
    }
    metrics.tunnels.set(this.listeners.size);
    if (changed) await this.publish();
  }

  /** A listener on the tunnel's port of before, or the first free one of --ports. */
  private async listen(t: Tunnel): Promise<TunnelListener | null> {
    const { cfg, log, metrics } = this.o;
    const taken = new Set([...this.listeners.values()].map((l) => l.port));
    const before = this.ports.get(t.record.id);
    const candidates = before !== undefined && !taken.has(before) ? [before] : [];
    for (let p = cfg.ports.first; p <= cfg.ports.last; p++) if (p !== before && !taken.has(p) && ![...this.ports.values()].includes(p)) candidates.push(p);
    for (const port of candidates) {
      const l = new TunnelListener(t, port, {
        localAddress: cfg.address,
        listenAddress: cfg.listenAddress,
        maxConnections: cfg.maxConnections,
        idleTimeoutMs: cfg.idleTimeoutMs,
        connectTimeoutMs: cfg.connectTimeoutMs,
        tls: cfg.tls,
        metrics,
        log,
      });
      try {
        await l.listen();
        this.ports.set(t.record.id, port);
        return l;
      } catch (err) {
        log.debug({ port, err: (err as Error).message }, 'port not available; trying the next');
      }
    }
    log.error({ tunnel: t.record.id, ports: `${cfg.ports.first}-${cfg.ports.last}` }, 'no free public port for a tunnel: it is not served (widen --ports)');
    return null;
  }

  /** This gateway's record as it stands. */
  record(): GatewayRecord {
    const { cfg } = this.o;
    return gatewayRecord.parse({
      v: SCHEMA_VERSION,
      address: cfg.address,
      region: cfg.region,
      node: cfg.node,
      publicAddress: cfg.publicAddress,
      listeners: [...this.listeners.values()].map((l) => ({ tunnel: l.id, port: l.port })).sort((a, b) => a.port - b.port),
      refused: [...this.refused].map(([tunnel, reason]) => ({ tunnel, reason })),
      version: this.o.version,
      startedAt: this.startedAt,
      heartbeatAt: new Date().toISOString(),
    });
  }

  /** Write the record (the heartbeat, and after every change). */
  async publish(): Promise<void> {
    try {
      await this.o.publish(this.record());
    } catch (err) {
      this.o.log.warn({ err: { message: (err as Error).message } }, 'writing the gateway record failed; the tunnels are served as they are');
    }
  }

  /** Stop serving: every listener closed, every connection ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    await this.running;
    await Promise.all([...this.listeners.values()].map((l) => l.close()));
    this.listeners.clear();
  }
}
