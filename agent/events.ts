/**
 * Drop events, from the kernel's ring buffer to NATS. Each record is
 * resolved against the node's membership (the endpoints map the programs
 * decided with, and the sync's local endpoints), written as the JSON of
 * lib/events.ts and published at once on core NATS, `i6pn.events.<region>.
 * <node>`; the I6PN_EVENTS stream keeps what it captures.
 *
 * Nothing here blocks the dataplane or the agent. The kernel bounds the rate
 * (--events-per-sec per CPU) and counts what it did not sample. While the
 * connection is down, events wait in a bounded queue, published when it is
 * back; a full queue drops its oldest. Everything not published is counted
 * by cause (i6pn_drop_events_unpublished_total).
 */
import { formatAddress, isPrivate, regionOf, workspaceOf } from '../lib/address.js';
import { eventsSubject, EVENT_MAX_BYTES, protocolName, type DropEventRecord, type EventEnd } from '../lib/events.js';
import { endpointKeyOf } from '../lib/schema.js';
import type { DropEvent } from './bpf/dataplane.js';
import type { Logger } from './log.js';
import type { AgentMetrics, UnpublishedCause } from './metrics.js';

/** Where events go: the agent's NATS connection (AgentStore). */
export interface EventSink {
  /** Connected now: a publish goes out (or into the client's buffer while it flushes). */
  readonly connected: boolean;
  /** Hand one message to the connection; throws when it cannot (closed, too large). */
  publish(subject: string, data: Uint8Array): void;
}

/** What the node's membership says of an address. */
export interface MembershipView {
  /** A live member of this node's region (its endpoints map entry), or null. */
  member(addr: Uint8Array): { i6pn: boolean; local: boolean } | null;
  /** The host-side veth of a local endpoint, by its store name. */
  localIfname(endpointKey: string): string | undefined;
}

export interface PublisherOptions {
  node: string;
  region: string;
  sink: EventSink;
  membership: MembershipView;
  metrics: AgentMetrics;
  log: Logger;
  /** Events held while the connection is down (default 4096, about 2 MB). */
  queueLimit?: number;
}

/**
 * The kernel's bpf_ktime_get_ns() is CLOCK_MONOTONIC, as is Node's hrtime:
 * their difference to the wall clock, taken again every minute (the wall
 * clock may be stepped), turns a drop's time into a date.
 */
export class MonotonicClock {
  private offsetNs = 0n;
  private takenAt = -Infinity;

  /** The wall time of a CLOCK_MONOTONIC instant, ISO 8601 to the microsecond. */
  iso(monotonicNs: bigint): string {
    const now = performance.now();
    if (now - this.takenAt > 60_000) {
      this.offsetNs = BigInt(Math.round((performance.timeOrigin + now) * 1e6)) - process.hrtime.bigint();
      this.takenAt = now;
    }
    const wall = monotonicNs + this.offsetNs;
    const ms = wall / 1_000_000n;
    const micros = (wall / 1000n) % 1000n;
    return `${new Date(Number(ms)).toISOString().slice(0, -1)}${micros.toString().padStart(3, '0')}Z`;
  }
}

export class DropEventPublisher {
  private readonly subject: string;
  private readonly queue: Uint8Array[] = [];
  private readonly queueLimit: number;
  private readonly clock = new MonotonicClock();
  private readonly encoder = new TextEncoder();
  private lastErrorLog = 0;

  constructor(private readonly o: PublisherOptions) {
    this.subject = eventsSubject(o.region, o.node);
    this.queueLimit = o.queueLimit ?? 4096;
  }

  /** Events waiting for the connection. */
  get queued(): number {
    return this.queue.length;
  }

  /** One record of the ring buffer: resolved now (the membership at the drop), published or queued. */
  take(e: DropEvent): void {
    this.o.metrics.dropEvents.inc();
    const record = this.record(e);
    this.o.log.debug(record, 'drop event');
    const data = this.encoder.encode(JSON.stringify(record));
    if (data.length > EVENT_MAX_BYTES) return this.lost('invalid', `event of ${data.length} bytes`);
    if (this.queue.length === 0 && this.o.sink.connected) {
      this.publish(data);
      return;
    }
    if (this.queue.length >= this.queueLimit) {
      this.queue.shift();
      this.o.metrics.dropEventsUnpublished.inc({ cause: 'queue_full' });
    }
    this.queue.push(data);
  }

  /** The connection is back: publish what waited. */
  flush(): void {
    while (this.queue.length > 0 && this.o.sink.connected) this.publish(this.queue.shift()!);
  }

  /** A record the dataplane could not decode. */
  invalid(err: Error): void {
    this.lost('invalid', err.message);
  }

  /** The server refused a publish on our subject (the credentials do not allow it). */
  denied(subject: string): void {
    this.lost('denied', `the server refused a publish to ${subject}: the agent's NATS credentials must allow publishing to ${this.subject}`);
  }

  private publish(data: Uint8Array): void {
    try {
      this.o.sink.publish(this.subject, data);
      this.o.metrics.dropEventsPublished.inc();
    } catch (err) {
      this.lost('error', (err as Error).message);
    }
  }

  private lost(cause: UnpublishedCause, problem: string): void {
    this.o.metrics.dropEventsUnpublished.inc({ cause });
    const now = Date.now();
    if (now - this.lastErrorLog > 60_000) {
      this.lastErrorLog = now;
      this.o.log.warn({ cause, problem }, 'a drop event was not published (logged at most once a minute; see i6pn_drop_events_unpublished_total)');
    }
  }

  private record(e: DropEvent): DropEventRecord {
    return {
      v: 1,
      time: this.clock.iso(e.tsNs),
      node: this.o.node,
      region: this.o.region,
      hook: e.hook,
      verdict: e.verdict === 'would_drop' ? 'would_drop' : 'drop',
      reason: e.reason,
      wouldDrop: e.verdict === 'would_drop',
      src: e.ipv6 ? this.end(e.src) : null,
      dst: e.ipv6 ? this.end(e.dst) : null,
      proto: e.proto === null ? null : protocolName(e.proto),
      ...(e.ports ? { sport: e.ports.src, dport: e.ports.dst } : {}),
      ...(e.icmp ? { icmpType: e.icmp.type, icmpCode: e.icmp.code } : {}),
      len: e.len,
      ifindex: e.ifindex,
    };
  }

  private end(addr: Uint8Array): EventEnd {
    const address = formatAddress(addr);
    if (!isPrivate(addr)) return { address };
    const out: EventEnd = { address, workspaceId: workspaceOf(addr), regionId: regionOf(addr) };
    const m = this.o.membership.member(addr);
    if (m) {
      out.endpoint = endpointKeyOf(this.o.region, addr);
      out.i6pn = m.i6pn;
      out.local = m.local;
      const ifname = m.local ? this.o.membership.localIfname(out.endpoint) : undefined;
      if (ifname !== undefined) out.ifname = ifname;
    }
    return out;
  }
}
