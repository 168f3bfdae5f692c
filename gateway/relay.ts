/**
 * One tunnel's public listener: accepts TCP (or TLS, terminated with the
 * gateway's certificate) on the gateway's public address and one port, and
 * relays each connection to the endpoint's private address and port, from
 * the gateway's own private address (the one the dataplane lets through, to
 * exactly this port). Bounded: at most `maxConnections` at once (more are
 * closed at once and counted), an idle timeout on both sides, a connect
 * timeout toward the endpoint. close() stops listening and ends every open
 * connection.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { formatAddress } from '../lib/address.js';
import type { Tunnel } from '../agent/tunnels.js';
import type { Logger } from '../agent/log.js';
import type { DIRECTIONS, ErrorKind, GatewayMetrics } from './metrics.js';

export interface RelayOptions {
  /** The gateway's private address: the source of every connection to an endpoint. */
  localAddress: string;
  listenAddress: string;
  maxConnections: number;
  idleTimeoutMs: number;
  connectTimeoutMs: number;
  tls: { cert: Buffer; key: Buffer } | null;
  metrics: GatewayMetrics;
  log: Logger;
}

/** One relayed connection: its two sockets and what the counters already have of them. */
interface Pair {
  client: Socket;
  upstream: Socket;
  countedIn: number;
  countedOut: number;
}

export class TunnelListener {
  readonly id: string;
  private readonly server: Server;
  private readonly pairs = new Set<Pair>();
  private closing = false;

  constructor(
    readonly tunnel: Tunnel,
    readonly port: number,
    private readonly o: RelayOptions,
  ) {
    this.id = tunnel.record.id;
    const onConnection = (client: Socket): void => this.relay(client);
    if (tunnel.record.tls) {
      if (!o.tls) throw new Error('a TLS tunnel needs --tls-cert and --tls-key');
      const server = createTlsServer({ cert: o.tls.cert, key: o.tls.key, allowHalfOpen: true }, onConnection);
      server.on('tlsClientError', (err, socket) => {
        this.count('tls');
        o.log.debug({ tunnel: this.id, err: err.message }, 'TLS handshake failed');
        socket.destroy();
      });
      this.server = server;
    } else {
      // Half-open: a client that is done sending (FIN) still gets the endpoint's answer.
      this.server = createServer({ allowHalfOpen: true }, onConnection);
    }
    this.server.on('error', (err) => o.log.error({ tunnel: this.id, port, err }, 'listener error'));
  }

  /** Listen on the public address and this port; rejects (EADDRINUSE, EACCES) without side effects. */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const fail = (err: Error): void => reject(err);
      this.server.once('error', fail);
      this.server.listen({ host: this.o.listenAddress, port: this.port, backlog: 1024 }, () => {
        this.server.off('error', fail);
        resolve();
      });
    });
  }

  get openConnections(): number {
    return this.pairs.size;
  }

  private count(kind: ErrorKind): void {
    this.o.metrics.errors.inc({ tunnel: this.id, kind });
  }

  private relay(client: Socket): void {
    const { metrics } = this.o;
    metrics.connections.inc({ tunnel: this.id });
    if (this.closing || this.pairs.size >= this.o.maxConnections) {
      this.count('limit');
      client.destroy();
      return;
    }
    const upstream = connect({ host: formatAddress(this.tunnel.addr), port: this.tunnel.record.port, localAddress: this.o.localAddress, noDelay: true, allowHalfOpen: true });
    client.setNoDelay(true);
    const pair: Pair = { client, upstream, countedIn: 0, countedOut: 0 };
    this.pairs.add(pair);
    metrics.open.set({ tunnel: this.id }, this.pairs.size);
    let connected = false;
    let done = false;
    const end = (kind: ErrorKind | null): void => {
      if (done) return;
      done = true;
      if (kind) this.count(kind);
      this.drain(pair, (t, d, n) => metrics.bytes.inc({ tunnel: t, direction: d }, n));
      this.pairs.delete(pair);
      metrics.open.set({ tunnel: this.id }, this.pairs.size);
      client.destroy();
      upstream.destroy();
    };
    const connectTimer = setTimeout(() => end('connect'), this.o.connectTimeoutMs);
    upstream.once('connect', () => {
      connected = true;
      clearTimeout(connectTimer);
      upstream.setTimeout(this.o.idleTimeoutMs, () => end('idle'));
    });
    client.setTimeout(this.o.idleTimeoutMs, () => end('idle'));
    client.pipe(upstream);
    upstream.pipe(client);
    client.on('error', () => end('reset'));
    upstream.on('error', () => {
      clearTimeout(connectTimer);
      end(connected ? 'reset' : 'connect');
    });
    // Half-close is carried by pipe (end); the pair ends when both sides are closed.
    let closed = 0;
    const onClose = (): void => {
      if (++closed === 2) {
        clearTimeout(connectTimer);
        end(null);
      }
    };
    client.on('close', onClose);
    upstream.on('close', () => {
      clearTimeout(connectTimer);
      if (!connected) end('connect');
      else onClose();
    });
  }

  private drain(p: Pair, add: (tunnel: string, direction: (typeof DIRECTIONS)[number], bytes: number) => void): void {
    const inBytes = p.client.bytesRead;
    const outBytes = p.client.bytesWritten;
    if (inBytes > p.countedIn) add(this.id, 'in', inBytes - p.countedIn);
    if (outBytes > p.countedOut) add(this.id, 'out', outBytes - p.countedOut);
    p.countedIn = inBytes;
    p.countedOut = outBytes;
  }

  /** What the open connections moved since the last scrape. */
  drainBytes(add: (tunnel: string, direction: (typeof DIRECTIONS)[number], bytes: number) => void): void {
    for (const p of this.pairs) this.drain(p, add);
  }

  /** Stop listening and end every open connection (the tunnel was removed). */
  close(): Promise<void> {
    this.closing = true;
    for (const p of [...this.pairs]) {
      p.client.destroy();
      p.upstream.destroy();
    }
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
