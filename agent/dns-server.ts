/**
 * The node resolver's sockets: the one module that owns them. UDP and TCP
 * port 53 at the resolver's address (fdaa::53, on the node's loopback
 * device, reached by every container through its own veth), answers from
 * agent/resolver.ts, and the forwarding of names outside the zone to the
 * upstream resolvers.
 *
 * One container must not be able to stop the answers to the others:
 *
 * - every query first takes a token from its source's bucket (--dns-rate-limit
 *   queries a second, twice that in a burst); over it, the query is dropped
 *   and counted before anything is decoded, so a flood costs a map lookup
 *   per datagram;
 * - a query longer than MAX_QUERY bytes is dropped unread (a query has one
 *   question: it never needs more); an undecodable one gets FORMERR or nothing;
 * - TCP: at most MAX_TCP_CONNECTIONS connections, MAX_TCP_PER_SOURCE per
 *   source, each closed after TCP_IDLE_MS without a complete query and when
 *   its client stops reading answers;
 * - at most MAX_FORWARDS queries wait on the upstreams at once
 *   (MAX_FORWARDS_PER_SOURCE per source), each for FORWARD_TIMEOUT_MS per
 *   upstream, then SERVFAIL.
 *
 * Listening converges like the attacher: converge() puts the address on the
 * loopback device if it is missing and binds whatever socket is not bound,
 * and is called at start and periodically, so an address removed by hand or
 * a bind that failed comes back.
 */
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { createServer, connect, type Server, type Socket as TcpSocket } from 'node:net';
import { randomInt } from 'node:crypto';
import { ensureLoopbackAddress } from './links.js';
import type { Logger } from './log.js';
import type { AgentMetrics, DnsDropReason } from './metrics.js';
import { Resolver, rcodeOf, type QuestionKey, type Resolution, type Transport } from './resolver.js';

/** A query is one question: never longer than this (a name is at most 255 bytes). */
export const MAX_QUERY = 4096;
const MAX_TCP_CONNECTIONS = 1024;
const MAX_TCP_PER_SOURCE = 32;
const TCP_IDLE_MS = 10_000;
/** Bytes of answers a TCP client may leave unread before it is cut off. */
const MAX_TCP_UNREAD = 1 << 20;
const MAX_FORWARDS = 4096;
const MAX_FORWARDS_PER_SOURCE = 256;
const FORWARD_TIMEOUT_MS = 1500;
/** Rate-limit buckets kept at most (one per source seen lately; sources are the node's endpoints). */
const MAX_BUCKETS = 65_536;

export interface Upstream {
  host: string;
  port: number;
}

export interface DnsServerOptions {
  /** The resolver's address (lib/address RESOLVER_ADDRESS). */
  address: string;
  port?: number;
  resolver: Resolver;
  /** Where names outside the zone go, in order; empty: nowhere (the resolver says REFUSED). */
  upstreams: Upstream[];
  /** Queries a second per source (burst: twice that); 0: no limit. */
  rateLimit: number;
  metrics: AgentMetrics;
  log: Logger;
  /** Put the address on the loopback device when it is missing (the agent; a test binds an address of its own). */
  manageAddress?: boolean;
}

/** Per-source token buckets. */
class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly burst: number;
  constructor(private readonly rate: number) {
    this.burst = rate * 2;
  }

  take(source: string, now: number): boolean {
    if (this.rate <= 0) return true;
    let b = this.buckets.get(source);
    if (!b) {
      if (this.buckets.size >= MAX_BUCKETS) this.prune(now);
      b = { tokens: this.burst, at: now };
      this.buckets.set(source, b);
    } else {
      b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
      b.at = now;
    }
    if (b.tokens < 1) return false;
    b.tokens -= 1;
    return true;
  }

  /** Forget the buckets that are full again (idle sources). */
  prune(now: number): void {
    for (const [k, b] of this.buckets) if (b.tokens + ((now - b.at) / 1000) * this.rate >= this.burst) this.buckets.delete(k);
    // Still full of busy sources (only the node's own processes can be this many): start over.
    if (this.buckets.size >= MAX_BUCKETS) this.buckets.clear();
  }
}

interface Pending {
  source: string;
  clientId: number;
  question: QuestionKey;
  query: Buffer;
  /** The upstream being asked (index into the list). */
  at: number;
  timer: NodeJS.Timeout;
  done: (answer: Buffer | null) => void;
}

/** Forwarding to the upstream resolvers, over UDP (or TCP for a client that came over TCP). */
class Forwarder {
  private readonly sockets = new Map<'udp4' | 'udp6', Socket>();
  private readonly pending = new Map<number, Pending>();
  private readonly perSource = new Map<string, number>();

  constructor(
    private readonly upstreams: Upstream[],
    private readonly log: Logger,
  ) {}

  /** Ask the upstreams; `done` gets their answer with the client's id, or null (none answered). False: no room now. */
  forward(query: Buffer, source: string, transport: Transport, done: (answer: Buffer | null) => void): boolean {
    const question = Resolver.questionOf(query);
    if (!question || this.upstreams.length === 0) {
      done(null);
      return true;
    }
    const mine = this.perSource.get(source) ?? 0;
    if (this.pending.size >= MAX_FORWARDS || mine >= MAX_FORWARDS_PER_SOURCE) return false;
    this.perSource.set(source, mine + 1);
    const finish = (answer: Buffer | null): void => {
      const n = (this.perSource.get(source) ?? 1) - 1;
      if (n > 0) this.perSource.set(source, n);
      else this.perSource.delete(source);
      done(answer);
    };
    if (transport === 'tcp') this.overTcp(query, 0, finish);
    else this.overUdp(query, source, question, finish);
    return true;
  }

  private overUdp(query: Buffer, source: string, question: QuestionKey, done: (answer: Buffer | null) => void): void {
    let id: number;
    do id = randomInt(0, 0x10000);
    while (this.pending.has(id));
    const p: Pending = { source, clientId: query.readUInt16BE(0), question, query: Buffer.from(query), at: 0, timer: undefined as never, done };
    p.query.writeUInt16BE(id, 0);
    this.pending.set(id, p);
    this.send(id, p);
  }

  private send(id: number, p: Pending): void {
    const u = this.upstreams[p.at]!;
    const family = isIPv6(u.host) ? 'udp6' : 'udp4';
    this.socket(family).send(p.query, u.port, u.host, (err) => {
      if (err) this.log.debug({ err, upstream: u }, 'sending to an upstream resolver failed');
    });
    p.timer = setTimeout(() => this.next(id, p), FORWARD_TIMEOUT_MS);
    p.timer.unref();
  }

  /** No answer from this upstream: the next one, or give up. */
  private next(id: number, p: Pending): void {
    if (p.at + 1 < this.upstreams.length) {
      p.at++;
      this.send(id, p);
      return;
    }
    this.pending.delete(id);
    p.done(null);
  }

  private socket(family: 'udp4' | 'udp6'): Socket {
    let s = this.sockets.get(family);
    if (s) return s;
    s = createSocket({ type: family });
    s.on('message', (msg, rinfo) => this.onAnswer(msg, rinfo));
    s.on('error', (err) => this.log.warn({ err, family }, 'upstream resolver socket failed'));
    s.bind(0);
    s.unref();
    this.sockets.set(family, s);
    return s;
  }

  private onAnswer(msg: Buffer, rinfo: RemoteInfo): void {
    if (msg.length < 12) return;
    const id = msg.readUInt16BE(0);
    const p = this.pending.get(id);
    if (!p) return;
    // Attack: an answer forged by someone else, or for another question (cache-poisoning style).
    const u = this.upstreams[p.at]!;
    if (rinfo.port !== u.port || rinfo.address.replace(/^::ffff:/, '') !== u.host) return;
    const q = Resolver.questionOf(msg);
    if (!q || q.name !== p.question.name || q.type !== p.question.type) return;
    clearTimeout(p.timer);
    this.pending.delete(id);
    msg.writeUInt16BE(p.clientId, 0);
    p.done(msg);
  }

  private overTcp(query: Buffer, at: number, done: (answer: Buffer | null) => void): void {
    const u = this.upstreams[at];
    if (!u) return done(null);
    let buf: Buffer = Buffer.alloc(0);
    let finished = false;
    const sock = connect({ host: u.host, port: u.port });
    const end = (answer: Buffer | null): void => {
      if (finished) return;
      finished = true;
      sock.destroy();
      if (answer) done(answer);
      else this.overTcp(query, at + 1, done);
    };
    sock.setTimeout(FORWARD_TIMEOUT_MS, () => end(null));
    sock.on('error', () => end(null));
    sock.on('connect', () => {
      const framed = Buffer.alloc(2 + query.length);
      framed.writeUInt16BE(query.length, 0);
      query.copy(framed, 2);
      sock.write(framed);
    });
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) end(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      else if (buf.length > 2 + 65535) end(null);
    });
    sock.on('close', () => end(null));
  }

  close(): void {
    for (const p of this.pending.values()) clearTimeout(p.timer);
    this.pending.clear();
    for (const s of this.sockets.values()) s.close();
    this.sockets.clear();
  }
}

export class DnsServer {
  private readonly o: DnsServerOptions;
  private readonly port: number;
  private readonly limiter: RateLimiter;
  private readonly forwarder: Forwarder;
  private udp: Socket | null = null;
  private tcp: Server | null = null;
  private readonly tcpPerSource = new Map<string, number>();
  private readonly connections = new Set<TcpSocket>();
  private converging: Promise<void> | null = null;
  private readonly localDuration: { observe(v: number): void };
  private pruner: NodeJS.Timeout | null = null;
  private stopped = false;

  constructor(o: DnsServerOptions) {
    this.o = o;
    this.port = o.port ?? 53;
    this.limiter = new RateLimiter(o.rateLimit);
    this.localDuration = o.metrics.dnsDuration.labels({ answered_by: 'local' });
    this.forwarder = new Forwarder(o.upstreams, o.log);
    this.pruner = setInterval(() => this.limiter.prune(Date.now()), 10_000);
    this.pruner.unref();
  }

  /** Whether both sockets are bound. */
  get listening(): boolean {
    return this.udp !== null && this.tcp !== null;
  }

  /** Put the address in place and bind what is not bound (coalesced). */
  converge(): Promise<void> {
    this.converging ??= this.convergeOnce().finally(() => {
      this.converging = null;
    });
    return this.converging;
  }

  private async convergeOnce(): Promise<void> {
    if (this.stopped) return;
    const { log, metrics } = this.o;
    try {
      if (this.o.manageAddress !== false) await ensureLoopbackAddress(this.o.address);
      if (!this.udp) this.udp = await this.bindUdp();
      if (!this.tcp) this.tcp = await this.listenTcp();
    } catch (err) {
      log.error({ err, address: this.o.address, port: this.port }, 'the node resolver cannot listen; retrying');
      // Sooner than the periodic converge: containers have no resolver meanwhile.
      setTimeout(() => void this.converge(), 1000).unref();
    }
    metrics.dnsListening.set(this.listening ? 1 : 0);
  }

  private bindUdp(): Promise<Socket> {
    return new Promise((resolve, reject) => {
      const s = createSocket({ type: 'udp6', ipv6Only: true, recvBufferSize: 4 << 20 });
      s.once('error', (err) => {
        s.close();
        reject(err);
      });
      s.bind({ address: this.o.address, port: this.port, exclusive: true }, () => {
        s.removeAllListeners('error');
        s.on('error', (err) => {
          this.o.log.error({ err }, 'the resolver\'s UDP socket failed; binding again');
          s.close();
          if (this.udp === s) this.udp = null;
          void this.converge();
        });
        s.on('message', (msg, rinfo) => this.onUdp(msg, rinfo));
        this.o.log.info({ address: this.o.address, port: this.port }, 'node resolver listening on UDP');
        resolve(s);
      });
    });
  }

  private listenTcp(): Promise<Server> {
    return new Promise((resolve, reject) => {
      const srv = createServer({ noDelay: true }, (sock) => this.onTcp(sock));
      srv.maxConnections = MAX_TCP_CONNECTIONS;
      srv.on('drop', () => this.o.metrics.dnsDropped.inc({ reason: 'connections' }));
      srv.once('error', reject);
      srv.listen({ host: this.o.address, port: this.port, ipv6Only: true, exclusive: true }, () => {
        srv.removeAllListeners('error');
        srv.on('error', (err) => this.o.log.error({ err }, 'the resolver\'s TCP listener failed'));
        this.o.log.info({ address: this.o.address, port: this.port }, 'node resolver listening on TCP');
        resolve(srv);
      });
    });
  }

  // ------------------------------------------------------------ queries

  private drop(reason: DnsDropReason): void {
    this.o.metrics.dnsDropped.inc({ reason });
  }

  /** The counter of one (transport, type, rcode), bound once (a label lookup per query costs more than the answer). */
  private counted = new Map<string, { inc(): void }>();
  private count(transport: Transport, type: string, rcode: string): void {
    const k = `${transport}/${type}/${rcode}`;
    let c = this.counted.get(k);
    if (!c) this.counted.set(k, (c = this.o.metrics.dnsQueries.labels({ transport, type, rcode })));
    c.inc();
  }


  /** Resolve one query and hand the answer to `send` (now, or when an upstream answers). */
  private handle(msg: Buffer, source: string, transport: Transport, send: (answer: Buffer) => void): void {
    const t0 = performance.now();
    if (msg.length > MAX_QUERY) return this.drop('too_large');
    if (!this.limiter.take(source, Date.now())) return this.drop('rate_limited');
    const { metrics } = this.o;
    let r: Resolution;
    try {
      r = this.o.resolver.resolve(msg, source, transport);
    } catch (err) {
      this.o.log.warn({ err, source }, 'resolving a query failed');
      return this.drop('malformed');
    }
    if (r.kind === 'drop') return this.drop('malformed');
    if (r.kind === 'answer') {
      send(r.bytes);
      this.count(transport, r.type, r.rcode);
      if (r.truncated) metrics.dnsTruncated.inc({ transport });
      this.localDuration.observe((performance.now() - t0) / 1000);
      return;
    }
    const type = r.type;
    const taken = this.forwarder.forward(msg, source, transport, (answer) => {
      const out = answer ?? this.o.resolver.failure(msg, transport);
      if (!out) return;
      send(out);
      this.count(transport, type, rcodeOf(out) ?? 'SERVFAIL');
      metrics.dnsDuration.observe({ answered_by: 'upstream' }, (performance.now() - t0) / 1000);
    });
    if (!taken) this.drop('upstream_busy');
  }

  private onUdp(msg: Buffer, rinfo: RemoteInfo): void {
    this.handle(msg, rinfo.address, 'udp', (answer) => {
      this.udp?.send(answer, rinfo.port, rinfo.address);
    });
  }

  private onTcp(sock: TcpSocket): void {
    const source = sock.remoteAddress ?? '';
    const mine = this.tcpPerSource.get(source) ?? 0;
    if (mine >= MAX_TCP_PER_SOURCE) {
      this.drop('connections');
      sock.destroy();
      return;
    }
    this.tcpPerSource.set(source, mine + 1);
    this.connections.add(sock);
    let buf: Buffer = Buffer.alloc(0);
    sock.setTimeout(TCP_IDLE_MS, () => sock.destroy());
    sock.on('error', () => sock.destroy());
    sock.on('close', () => {
      this.connections.delete(sock);
      const n = (this.tcpPerSource.get(source) ?? 1) - 1;
      if (n > 0) this.tcpPerSource.set(source, n);
      else this.tcpPerSource.delete(source);
    });
    const send = (answer: Buffer): void => {
      if (sock.destroyed) return;
      // A client that does not read its answers is cut off rather than held in memory.
      if (sock.writableLength > MAX_TCP_UNREAD) {
        this.drop('connections');
        sock.destroy();
        return;
      }
      const framed = Buffer.alloc(2 + answer.length);
      framed.writeUInt16BE(answer.length, 0);
      answer.copy(framed, 2);
      sock.write(framed);
    };
    sock.on('data', (d: Buffer) => {
      buf = buf.length ? Buffer.concat([buf, d]) : d;
      while (buf.length >= 2) {
        const len = buf.readUInt16BE(0);
        if (len > MAX_QUERY) {
          this.drop('too_large');
          sock.destroy();
          return;
        }
        if (buf.length < 2 + len) break;
        const msg = Buffer.from(buf.subarray(2, 2 + len));
        buf = buf.subarray(2 + len);
        this.handle(msg, source, 'tcp', send);
      }
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.pruner) clearInterval(this.pruner);
    this.forwarder.close();
    this.udp?.close();
    this.udp = null;
    for (const c of this.connections) c.destroy();
    await new Promise<void>((resolve) => (this.tcp ? this.tcp.close(() => resolve()) : resolve()));
    this.tcp = null;
    this.o.metrics.dnsListening.set(0);
  }
}
