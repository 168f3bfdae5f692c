/**
 * The gateway's Prometheus metrics: its own registry (prom-client), per
 * tunnel (the `tunnel` label is the tunnel's id; a removed tunnel's series go
 * with it). Bytes are read from the open connections at scrape time, so a
 * long connection shows its traffic while it lasts. No process metrics: the
 * node's exporter has them, and prom-client's `_total` gauges fail promtool.
 */
import { Counter, Gauge, Registry } from 'prom-client';

export const GATEWAY_METRIC_NAMES = [
  'i6pn_gateway_connections_total',
  'i6pn_gateway_open_connections',
  'i6pn_gateway_bytes_total',
  'i6pn_gateway_errors_total',
  'i6pn_gateway_tunnels',
  'i6pn_gateway_nats_connected',
  'i6pn_gateway_info',
] as const;

/**
 * Why a connection failed or was cut: limit (the tunnel's --max-connections
 * were open: refused), connect (the endpoint did not answer or refused),
 * tls (the public side's handshake failed), idle (no byte either way for
 * --idle-timeout), reset (either side broke the connection).
 */
export const ERROR_KINDS = ['limit', 'connect', 'tls', 'idle', 'reset'] as const;
export type ErrorKind = (typeof ERROR_KINDS)[number];
/** in: from the public to the endpoint; out: back. */
export const DIRECTIONS = ['in', 'out'] as const;

/** Bytes a connection moved that the counters do not have yet. */
export interface ByteSource {
  /** Adds what moved since the last call, per direction, and returns nothing. */
  drainBytes(add: (tunnel: string, direction: (typeof DIRECTIONS)[number], bytes: number) => void): void;
}

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly connections: Counter<'tunnel'>;
  readonly open: Gauge<'tunnel'>;
  readonly bytes: Counter<'tunnel' | 'direction'>;
  readonly errors: Counter<'tunnel' | 'kind'>;
  readonly tunnels: Gauge;
  readonly natsConnected: Gauge;
  private source: ByteSource | null = null;

  constructor(info: { version: string; region: string; address: string }) {
    const registers = [this.registry];
    this.connections = new Counter({ name: 'i6pn_gateway_connections_total', help: 'Public connections accepted, per tunnel (refused ones included).', labelNames: ['tunnel'], registers });
    this.open = new Gauge({ name: 'i6pn_gateway_open_connections', help: 'Connections being relayed now, per tunnel.', labelNames: ['tunnel'], registers });
    // eslint-disable-next-line @typescript-eslint/no-this-alias
    const self = this;
    this.bytes = new Counter({
      name: 'i6pn_gateway_bytes_total',
      help: 'Bytes relayed per tunnel: in from the public to the endpoint, out back.',
      labelNames: ['tunnel', 'direction'],
      registers,
      collect() {
        self.source?.drainBytes((tunnel, direction, n) => this.inc({ tunnel, direction }, n));
      },
    });
    this.errors = new Counter({ name: 'i6pn_gateway_errors_total', help: `Connections refused, failed or cut, per tunnel and kind (${ERROR_KINDS.join(', ')}).`, labelNames: ['tunnel', 'kind'], registers });
    this.tunnels = new Gauge({ name: 'i6pn_gateway_tunnels', help: 'Tunnels this gateway listens for.', registers });
    this.natsConnected = new Gauge({ name: 'i6pn_gateway_nats_connected', help: '1 while connected to NATS; the tunnels served stay as they are while 0.', registers });
    new Gauge({ name: 'i6pn_gateway_info', help: "Always 1; the gateway's build and identity as labels.", labelNames: ['version', 'region', 'address'], registers }).set(info, 1);
    this.tunnels.set(0);
    this.natsConnected.set(0);
  }

  setByteSource(s: ByteSource): void {
    this.source = s;
  }

  /** A tunnel is served: its series start at zero. */
  addTunnel(tunnel: string): void {
    this.connections.inc({ tunnel }, 0);
    this.open.set({ tunnel }, 0);
    for (const direction of DIRECTIONS) this.bytes.inc({ tunnel, direction }, 0);
    for (const kind of ERROR_KINDS) this.errors.inc({ tunnel, kind }, 0);
  }

  /** A tunnel is no longer served: its series go. */
  removeTunnel(tunnel: string): void {
    this.connections.remove({ tunnel });
    this.open.remove({ tunnel });
    for (const direction of DIRECTIONS) this.bytes.remove({ tunnel, direction });
    for (const kind of ERROR_KINDS) this.errors.remove({ tunnel, kind });
  }

  async render(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}
