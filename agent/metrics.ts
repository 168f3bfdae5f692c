/**
 * The agent's Prometheus metrics: the one module that knows prom-client. Its
 * own Registry (nothing global), exactly the catalogue of
 * deploy/metrics.json (dashboards and alerts are built on these names), every
 * labelled series created at zero at start so that rate() and the alerts work
 * from the first scrape.
 *
 * The BPF counters are not pushed: `collect()` reads the per-CPU counters map
 * at scrape time (one read serves both packets and bytes), and a failed read
 * is logged and leaves the last values in place.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import * as abi from './bpf/abi.generated.js';
import type { InvalidReason } from '../lib/schema.js';
import type { Logger } from './log.js';
import { QUERY_TYPES, RCODES } from './resolver.js';

/** Every metric this module registers, besides prom-client's default metrics. */
export const METRIC_NAMES = [
  'i6pn_packets_total',
  'i6pn_bytes_total',
  'i6pn_endpoints',
  'i6pn_map_entries',
  'i6pn_map_capacity',
  'i6pn_membership_updates_total',
  'i6pn_membership_rejected_total',
  'i6pn_tunnels_rejected_total',
  'i6pn_membership_last_revision',
  'i6pn_membership_starts_total',
  'i6pn_membership_apply_latency_seconds',
  'i6pn_reconcile_total',
  'i6pn_reconcile_removed_total',
  'i6pn_nats_connected',
  'i6pn_nats_disconnects_total',
  'i6pn_attached_hooks',
  'i6pn_veths',
  'i6pn_veths_sealed_total',
  'i6pn_endpoint_refused_total',
  'i6pn_unhooked_endpoints',
  'i6pn_map_full_total',
  'i6pn_drop_events_total',
  'i6pn_drop_events_suppressed_total',
  'i6pn_drop_events_published_total',
  'i6pn_drop_events_unpublished_total',
  'i6pn_heartbeat_last_success_timestamp_seconds',
  'i6pn_dns_queries_total',
  'i6pn_dns_query_duration_seconds',
  'i6pn_dns_dropped_total',
  'i6pn_dns_truncated_total',
  'i6pn_dns_names',
  'i6pn_dns_listening',
  'i6pn_agent_info',
] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

/** Prefix of prom-client's process and Node.js metrics. */
export const DEFAULT_METRICS_PREFIX = 'i6pn_agent_';

/**
 * prom-client default metrics left out: gauges whose names end in `_total`,
 * which `promtool check metrics` rejects ("non-counter metrics should not have
 * _total suffix"). Each is the sum over the `type` label of the gauge of the
 * same name without `_total` (e.g. sum(i6pn_agent_nodejs_active_handles)).
 */
export const OMITTED_DEFAULT_METRICS = [
  `${'i6pn_agent_'}nodejs_active_handles_total`,
  `${'i6pn_agent_'}nodejs_active_requests_total`,
  `${'i6pn_agent_'}nodejs_active_resources_total`,
] as const;

export const HOOK_LABELS = abi.HOOK_NAMES;
export const VERDICT_LABELS = abi.VERDICT_NAMES;

/** The `reason` label of each reason value, as generated from the C enum (pass_private, cross_region, ...). */
export const REASON_LABELS = abi.REASON_NAMES;

export const MEMBERSHIP_RESULTS = ['applied', 'rejected', 'failed'] as const;
export type MembershipResult = (typeof MEMBERSHIP_RESULTS)[number];
/** Why an entry was rejected (lib/schema.ts InvalidReason): one series each, from the start. */
export const REJECT_REASONS = ['json', 'schema', 'address', 'key', 'region', 'too_large'] as const satisfies readonly InvalidReason[];
export type RejectReason = (typeof REJECT_REASONS)[number];
export const RECONCILE_RESULTS = ['ok', 'failed'] as const;
/** Where a live read of the endpoints bucket started: after the pinned revision, or at the stream's start. */
export const START_KINDS = ['revision', 'snapshot'] as const;
export const MAPS = ['endpoints', 'local_ifaces', 'tunnels'] as const;
export type MapLabel = (typeof MAPS)[number];
export const SCOPES = ['local', 'region'] as const;
/**
 * States of a veth the agent holds TC programs on: bound (local_ifaces entry
 * binding it to its endpoint), sealed (entry with the sealed flag: drops
 * everything in and out until the veth is gone), unbound (no entry could be
 * written, e.g. local_ifaces full: the programs drop everything as unknown_iface).
 */
export const VETH_STATES = ['bound', 'sealed', 'unbound'] as const;
export type VethState = (typeof VETH_STATES)[number];
/** Why a veth was sealed: its endpoint was removed, invalidated or moved away; two entries named it. */
export const SEAL_REASONS = ['revoked', 'duplicate_ifname'] as const;
export type SealReason = (typeof SEAL_REASONS)[number];
/**
 * Why a local endpoint entry was refused (never applied to its interface):
 * it names the uplink; an interface that is not a veth (or netkit); a veth
 * bound (or sealed) for another endpoint; a veth another entry names too; its
 * own veth, sealed earlier (sealing is terminal while the veth exists).
 */
export const REFUSE_REASONS = ['uplink', 'not_veth', 'bound_to_other', 'duplicate_ifname', 'sealed'] as const;
export type RefuseReason = (typeof REFUSE_REASONS)[number];
/**
 * Drops the kernel did not write as events: past the per-CPU budget
 * (--events-per-sec), or with no room in the ring buffer (the agent not
 * reading). With events on, every drop is an event or one of these.
 */
export const SUPPRESSED_CAUSES = ['budget', 'ring_full'] as const;
/**
 * Events read but not published: the queue held while NATS is unreachable
 * overflowed (oldest first); the server refused the subject (credentials);
 * the connection refused the message (closed); a record that could not be
 * decoded or encoded.
 */
export const UNPUBLISHED_CAUSES = ['queue_full', 'denied', 'error', 'invalid'] as const;
export type UnpublishedCause = (typeof UNPUBLISHED_CAUSES)[number];
export const APPLY_LATENCY_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
export const DNS_TRANSPORTS = ['udp', 'tcp'] as const;
export { QUERY_TYPES as DNS_QUERY_TYPES, RCODES as DNS_RCODES };
/** Who answered: the resolver from its index (local), or an upstream resolver (upstream, or its timeout). */
export const DNS_ANSWERED_BY = ['local', 'upstream'] as const;
/**
 * Queries not answered: over the source's rate (rate_limited); not a DNS
 * query at all (malformed); longer than a query can be (too_large); beyond
 * the TCP connection limits (connections); no room for another forwarded
 * query (upstream_busy).
 */
export const DNS_DROP_REASONS = ['rate_limited', 'malformed', 'too_large', 'connections', 'upstream_busy'] as const;
export type DnsDropReason = (typeof DNS_DROP_REASONS)[number];
export const DNS_LATENCY_BUCKETS = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1, 2.5];

/** One row of the BPF counters, summed over CPUs (Dataplane.readCounters()). */
export interface CounterRow {
  hook: string;
  verdict: string;
  reason: string;
  packets: bigint;
  bytes: bigint;
}

export interface AgentInfo {
  version: string;
  node: string;
  region: string;
  mode: 'enforce' | 'monitor';
}

export class AgentMetrics {
  readonly registry = new Registry();
  readonly endpoints: Gauge<'scope'>;
  readonly mapEntries: Gauge<'map'>;
  readonly mapCapacity: Gauge<'map'>;
  readonly membershipUpdates: Counter<'result'>;
  readonly membershipRejected: Counter<'reason'>;
  readonly tunnelsRejected: Counter<'reason'>;
  readonly lastRevision: Gauge;
  readonly membershipStarts: Counter<'from'>;
  readonly applyLatency: Histogram;
  readonly reconciles: Counter<'result'>;
  readonly reconcileRemoved: Counter;
  readonly natsConnected: Gauge;
  readonly natsDisconnects: Counter;
  readonly attachedHooks: Gauge<'hook'>;
  readonly veths: Gauge<'state'>;
  readonly vethsSealed: Counter<'reason'>;
  readonly endpointRefused: Counter<'reason'>;
  readonly unhookedEndpoints: Gauge;
  readonly mapFull: Counter;
  readonly dropEvents: Counter;
  readonly dropEventsPublished: Counter;
  readonly dropEventsUnpublished: Counter<'cause'>;
  readonly heartbeatLastSuccess: Gauge;
  readonly dnsQueries: Counter<'transport' | 'type' | 'rcode'>;
  readonly dnsDuration: Histogram<'answered_by'>;
  readonly dnsDropped: Counter<'reason'>;
  readonly dnsTruncated: Counter<'transport'>;
  readonly dnsNames: Gauge;
  readonly dnsListening: Gauge;
  readonly info: Gauge<'version' | 'node' | 'region' | 'mode'>;

  private counterSource: (() => CounterRow[]) | null = null;
  private eventLossSource: (() => { overBudget: bigint; ringFull: bigint }) | null = null;
  private namesSource: (() => number) | null = null;
  private cached: { at: number; rows: CounterRow[] } | null = null;
  private lastReadError = 0;

  constructor(info: AgentInfo, private readonly log: Logger) {
    const registers = [this.registry];
    const self = this;
    const bpfLabels = ['hook', 'verdict', 'reason'] as const;

    new Counter({
      name: 'i6pn_packets_total',
      help: 'Packets seen by the BPF programs, by hook, verdict and reason (per-CPU counters summed).',
      labelNames: bpfLabels,
      registers,
      collect() {
        self.fillCounter(this, 'packets');
      },
    });
    new Counter({
      name: 'i6pn_bytes_total',
      help: 'Bytes seen by the BPF programs, by hook, verdict and reason.',
      labelNames: bpfLabels,
      registers,
      collect() {
        self.fillCounter(this, 'bytes');
      },
    });
    this.endpoints = new Gauge({
      name: 'i6pn_endpoints',
      help: 'Endpoints known to this agent: local = served by this node, region = every live member of its region.',
      labelNames: ['scope'],
      registers,
    });
    this.mapEntries = new Gauge({ name: 'i6pn_map_entries', help: 'Entries in a BPF map.', labelNames: ['map'], registers });
    this.mapCapacity = new Gauge({ name: 'i6pn_map_capacity', help: 'max_entries of a BPF map.', labelNames: ['map'], registers });
    this.membershipUpdates = new Counter({
      name: 'i6pn_membership_updates_total',
      help:
        'Membership KV updates by outcome: applied to the maps; rejected (invalid entry, see i6pn_membership_rejected_total); failed (valid, but the map update failed).',
      labelNames: ['result'],
      registers,
    });
    this.membershipRejected = new Counter({
      name: 'i6pn_membership_rejected_total',
      help:
        "Invalid entries of the region's endpoints bucket (never applied), by what was wrong: json (not JSON), schema (not the record), address (not the record's address), key (not the record's key), region (a record of another region), too_large (longer than a record can be; refused unparsed).",
      labelNames: ['reason'],
      registers,
    });
    this.tunnelsRejected = new Counter({
      name: 'i6pn_tunnels_rejected_total',
      help: "Invalid entries of the region's tunnels bucket (never applied), by what was wrong.",
      labelNames: ['reason'],
      registers,
    });
    this.lastRevision = new Gauge({
      name: 'i6pn_membership_last_revision',
      help: "KV revision of the last membership update applied (the region's endpoints bucket); the agents of one region converge on the same value.",
      registers,
    });
    this.membershipStarts = new Counter({
      name: 'i6pn_membership_starts_total',
      help: 'Starts of the membership read: from="revision" resumed after the revision the pinned maps reflect (sync_state); from="snapshot" read the region whole.',
      labelNames: ['from'],
      registers,
    });
    this.applyLatency = new Histogram({
      name: 'i6pn_membership_apply_latency_seconds',
      help: "Time from the KV write (the message's server timestamp) to the map update.",
      buckets: APPLY_LATENCY_BUCKETS,
      registers,
    });
    this.reconciles = new Counter({
      name: 'i6pn_reconcile_total',
      help: 'Periodic full reconciliations (mark and sweep) of the maps against the store, by outcome.',
      labelNames: ['result'],
      registers,
    });
    this.reconcileRemoved = new Counter({
      name: 'i6pn_reconcile_removed_total',
      help: 'Map entries removed by reconciliation because the store no longer had them (a lost delete).',
      registers,
    });
    this.natsConnected = new Gauge({ name: 'i6pn_nats_connected', help: '1 while connected to NATS, else 0.', registers });
    this.natsDisconnects = new Counter({
      name: 'i6pn_nats_disconnects_total',
      help: 'Times the NATS connection was lost (the server closed it, e.g. a slow consumer cut off, or the network failed); the agent reconnects and reads what changed meanwhile, the dataplane frozen at its last state until then.',
      registers,
    });
    this.attachedHooks = new Gauge({
      name: 'i6pn_attached_hooks',
      help: 'Programs attached, by hook: from_fabric and to_fabric are 1 when the uplink XDP and TC egress programs are attached; the endpoint TC hooks count endpoint veths.',
      labelNames: ['hook'],
      registers,
    });
    this.veths = new Gauge({
      name: 'i6pn_veths',
      help:
        'Endpoint veths carrying the TC programs, by state: bound (to its endpoint), sealed (endpoint revoked: drops everything until the veth is gone), unbound (no local_ifaces entry, e.g. the map is full: drops everything).',
      labelNames: ['state'],
      registers,
    });
    this.vethsSealed = new Counter({
      name: 'i6pn_veths_sealed_total',
      help: 'Veths sealed, by reason: revoked (endpoint removed, invalidated or moved away while its veth exists), duplicate_ifname (two entries named it).',
      labelNames: ['reason'],
      registers,
    });
    this.endpointRefused = new Counter({
      name: 'i6pn_endpoint_refused_total',
      help:
        'Local endpoint entries refused (never applied to the interface they name), by reason: uplink, not_veth, bound_to_other, duplicate_ifname, sealed.',
      labelNames: ['reason'],
      registers,
    });
    this.unhookedEndpoints = new Gauge({
      name: 'i6pn_unhooked_endpoints',
      help: 'Local endpoints whose interface exists but that are not bound to it (refused, sealed, or local_ifaces full): unreachable, and they reach nothing.',
      registers,
    });
    this.mapFull = new Counter({
      name: 'i6pn_map_full_total',
      help: 'Map updates refused because the map was full (endpoints: the endpoint stays unreachable; local_ifaces: the veth keeps its programs without an entry and drops everything).',
      registers,
    });
    this.dropEvents = new Counter({
      name: 'i6pn_drop_events_total',
      help: 'Sampled drop events read from the ring buffer.',
      registers,
    });
    new Counter({
      name: 'i6pn_drop_events_suppressed_total',
      help:
        'Drops the BPF programs did not write as events, by cause: budget (past --events-per-sec on a CPU), ring_full (no room in the ring buffer: the agent is not reading). With events on, every drop counted in i6pn_packets_total is an event or one of these.',
      labelNames: ['cause'],
      registers,
      collect() {
        self.fillSuppressed(this);
      },
    });
    this.dropEventsPublished = new Counter({
      name: 'i6pn_drop_events_published_total',
      help: 'Drop events handed to the NATS connection, on subject i6pn.events.<region>.<node>.',
      registers,
    });
    this.dropEventsUnpublished = new Counter({
      name: 'i6pn_drop_events_unpublished_total',
      help:
        'Drop events read but not published, by cause: queue_full (NATS unreachable too long; the oldest went first), denied (the server refused the subject: credentials), error (the connection refused it), invalid (a record that could not be decoded).',
      labelNames: ['cause'],
      registers,
    });
    this.heartbeatLastSuccess = new Gauge({
      name: 'i6pn_heartbeat_last_success_timestamp_seconds',
      help: "Unix time of the last successful write of this node's heartbeat key (i6pn_nodes.<node>).",
      registers,
    });
    this.dnsQueries = new Counter({
      name: 'i6pn_dns_queries_total',
      help: 'Queries the node resolver answered, by transport, query type and response code (REFUSED: a source that is no local i6pn endpoint, or a name outside the zone without upstream; SERVFAIL: the index not yet complete, or no upstream answered).',
      labelNames: ['transport', 'type', 'rcode'],
      registers,
    });
    this.dnsDuration = new Histogram({
      name: 'i6pn_dns_query_duration_seconds',
      help: 'Time from reading a query to sending its answer, by who answered: the resolver (local) or an upstream resolver (upstream).',
      labelNames: ['answered_by'],
      buckets: DNS_LATENCY_BUCKETS,
      registers,
    });
    this.dnsDropped = new Counter({
      name: 'i6pn_dns_dropped_total',
      help: 'Queries the node resolver dropped unanswered, by reason: rate_limited (over the per-source rate), malformed (not a query), too_large, connections (TCP limits), upstream_busy.',
      labelNames: ['reason'],
      registers,
    });
    this.dnsTruncated = new Counter({
      name: 'i6pn_dns_truncated_total',
      help: 'Answers cut to fit (TC set): over UDP the client asks again over TCP; over TCP the 64 KiB message limit was reached.',
      labelNames: ['transport'],
      registers,
    });
    this.dnsNames = new Gauge({
      name: 'i6pn_dns_names',
      help: 'Named i6pn endpoints (a name or a cluster rank) in the resolver\'s index.',
      registers,
      collect() {
        if (self.namesSource) this.set(self.namesSource());
      },
    });
    this.dnsListening = new Gauge({ name: 'i6pn_dns_listening', help: '1 while the node resolver listens on UDP and TCP port 53 of its address, else 0 (also 0 with --dns off).', registers });
    this.info = new Gauge({
      name: 'i6pn_agent_info',
      help: "Always 1; the agent's build and settings as labels.",
      labelNames: ['version', 'node', 'region', 'mode'],
      registers,
    });

    // Every series at zero from the start.
    for (const scope of SCOPES) this.endpoints.set({ scope }, 0);
    for (const map of MAPS) {
      this.mapEntries.set({ map }, 0);
      this.mapCapacity.set({ map }, 0);
    }
    for (const result of MEMBERSHIP_RESULTS) this.membershipUpdates.inc({ result }, 0);
    for (const reason of REJECT_REASONS) this.membershipRejected.inc({ reason }, 0);
    for (const reason of REJECT_REASONS) this.tunnelsRejected.inc({ reason }, 0);
    for (const result of RECONCILE_RESULTS) this.reconciles.inc({ result }, 0);
    for (const from of START_KINDS) this.membershipStarts.inc({ from }, 0);
    for (const hook of HOOK_LABELS) this.attachedHooks.set({ hook }, 0);
    for (const state of VETH_STATES) this.veths.set({ state }, 0);
    for (const reason of SEAL_REASONS) this.vethsSealed.inc({ reason }, 0);
    for (const reason of REFUSE_REASONS) this.endpointRefused.inc({ reason }, 0);
    this.unhookedEndpoints.set(0);
    this.lastRevision.set(0);
    this.natsConnected.set(0);
    this.natsDisconnects.inc(0);
    this.heartbeatLastSuccess.set(0);
    this.reconcileRemoved.inc(0);
    this.mapFull.inc(0);
    this.dropEvents.inc(0);
    this.dropEventsPublished.inc(0);
    for (const cause of UNPUBLISHED_CAUSES) this.dropEventsUnpublished.inc({ cause }, 0);
    for (const transport of DNS_TRANSPORTS) {
      this.dnsTruncated.inc({ transport }, 0);
      for (const type of QUERY_TYPES) for (const rcode of RCODES) this.dnsQueries.inc({ transport, type, rcode }, 0);
    }
    for (const reason of DNS_DROP_REASONS) this.dnsDropped.inc({ reason }, 0);
    for (const answered_by of DNS_ANSWERED_BY) this.dnsDuration.zero({ answered_by });
    this.dnsNames.set(0);
    this.dnsListening.set(0);
    this.info.set({ ...info }, 1);

    collectDefaultMetrics({ register: this.registry, prefix: DEFAULT_METRICS_PREFIX });
    for (const name of OMITTED_DEFAULT_METRICS) this.registry.removeSingleMetric(name);
  }

  /** Where the BPF counters come from (the dataplane, once open); null: export zeros. */
  setCounterSource(read: (() => CounterRow[]) | null): void {
    this.counterSource = read;
    this.cached = null;
  }

  /** Where the kernel's count of drops not sampled comes from (the dataplane, once open); null: zeros. */
  setEventLossSource(read: (() => { overBudget: bigint; ringFull: bigint }) | null): void {
    this.eventLossSource = read;
  }

  private fillSuppressed(c: Counter<'cause'>): void {
    let lost = { overBudget: 0n, ringFull: 0n };
    try {
      if (this.eventLossSource) lost = this.eventLossSource();
    } catch (err) {
      this.log.warn({ err }, 'reading the BPF event stats failed; keeping the last values');
      return;
    }
    c.reset();
    c.inc({ cause: 'budget' }, Number(lost.overBudget));
    c.inc({ cause: 'ring_full' }, Number(lost.ringFull));
  }

  /** How many named endpoints the resolver's index holds, read at scrape time. */
  setNamesSource(read: (() => number) | null): void {
    this.namesSource = read;
  }

  /** Prometheus text exposition of the registry. */
  async render(): Promise<{ contentType: string; body: string }> {
    this.cached = null;
    const body = await this.registry.metrics();
    return { contentType: this.registry.contentType, body };
  }

  private rows(): CounterRow[] | null {
    const now = Date.now();
    if (this.cached && now - this.cached.at < 500) return this.cached.rows;
    if (!this.counterSource) return [];
    try {
      const rows = this.counterSource();
      this.cached = { at: now, rows };
      return rows;
    } catch (err) {
      // A scrape must not fail because of the map; say so, at most every minute.
      if (now - this.lastReadError > 60_000) {
        this.lastReadError = now;
        this.log.warn({ err }, 'reading the BPF counters failed; keeping the last values');
      }
      return null;
    }
  }

  private fillCounter(c: Counter<'hook' | 'verdict' | 'reason'>, field: 'packets' | 'bytes'): void {
    const rows = this.rows();
    if (rows === null) return; // keep the last values
    const values = new Map<string, number>();
    for (const r of rows) {
      values.set(`${r.hook}\0${r.verdict}\0${r.reason}`, Number(r[field]));
    }
    c.reset();
    for (const hook of HOOK_LABELS) {
      for (const verdict of VERDICT_LABELS) {
        for (const reason of REASON_LABELS) {
          c.inc({ hook, verdict, reason }, values.get(`${hook}\0${verdict}\0${reason}`) ?? 0);
        }
      }
    }
  }
}
