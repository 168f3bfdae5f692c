/**
 * The fault-injection harness (issue 16): traffic, writes and the check, on a
 * fabric Cluster with agents and a 3-server NATS cluster (R3 buckets).
 *
 * API (for every fault test and the soak; see test/faults/README.md):
 *
 *   const c = await upFaultCluster({ log })         Cluster.up: agents, natsCluster: 3, Prometheus,
 *                                                   --heartbeat-interval 1; take the fabric lock first
 *   c.natsCluster!.metaLeader() / .streamLeader(endpointsStream('ams'))
 *   c.natsCluster!.killServer(i) / .startServer(i) / .stopAll() / .startAll()
 *
 *   const traffic = await Traffic.start(c, defaultFlows(c))
 *       steady UDP flows (flow.py in the containers): allowed (same node, cross node, both regions)
 *       and forbidden (cross workspace, cross region, spoofed source, from a sealed endpoint)
 *   traffic.mark('kill')                            a named instant, for reading gaps against
 *   const tr = await traffic.stop()                 TrafficReport: per flow sent/delivered/lost/longest gap;
 *                                                   allowedLost, allowedLongestGapMs, forbiddenDelivered
 *
 *   const churn = new Churn(c, { region: 'ams', intervalMs: 300 }); churn.start()
 *       adds, removes and moves (remove + add on another node) through i6pnctl; a failed write is
 *       retried by the driver (a new write; the failed one is recorded), never assumed done
 *   const cr = await churn.stop({ boundMs })        ChurnReport: writes, acked, failed attempts,
 *                                                   enforce latency p50/max, over bound, acked writes lost
 *
 *   await mapsVsStore(c)                            per node, what its pinned endpoints map and the store
 *                                                   disagree on ([] when equal)
 *   await waitMapsEqualStore(c, timeoutMs)          ms until every agent's maps equal the store
 *
 *   figures(name, { traffic, churn, convergeMs, extra }) -> FaultFigures (violations listed),
 *   summary(f) -> one line for t.log.
 *
 * Guarantees checked by figures(): forbidden delivered == 0 over the whole run;
 * every acknowledged write in the store at the end and enforced within its
 * bound; allowed loss is reported (a scenario asserts 0 where the design
 * promises it: the pinned dataplane forwards while the agent is away).
 */
import { createInterface } from 'node:readline';
import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { connectStore } from '../../lib/store.js';
import { listEndpoints } from '../../controller/store/endpoints.js';
import { readPinnedEndpoints } from '../helpers/agent-maps.js';
import { Cluster, type ClusterOptions } from '../fabric/cluster.js';
import { sleep, startProcess } from '../fabric/exec.js';
import type { FabricEndpoint } from '../fabric/fabric.js';
import { PYTHON } from '../fabric/probes.js';

const FLOW_PY = fileURLToPath(new URL('../fabric/flow.py', import.meta.url));
export const FLOW_PORT = 7101;

/** The stream of a region's endpoints bucket (the one the leader-loss fault kills the leader of). */
export function endpointsStream(region: string): string {
  return `KV_i6pn_endpoints_${region}`;
}

/** The fault suite's cluster: agents following a 3-server NATS cluster, Prometheus, no probe daemons. */
export async function upFaultCluster(opts: { log?: (m: string) => void; agentArgs?: string[] } & Partial<ClusterOptions> = {}): Promise<Cluster> {
  return Cluster.up({
    dataplane: 'agent',
    natsCluster: 3,
    probes: false,
    agentArgs: ['--heartbeat-interval', '1', '--log-level', 'info', ...(opts.agentArgs ?? [])],
    ...opts,
  });
}

// ---------------------------------------------------------------- traffic

export interface FlowSpec {
  name: string;
  from: string;
  to: string;
  allowed: boolean;
  /** What makes it allowed or forbidden (same-node, cross-node, cross-workspace, cross-region, spoofed, sealed). */
  why: string;
  pps: number;
  /** Spoofed: the IPv6 source put on the frame (another endpoint's address). */
  spoofAs?: string;
}

export interface FlowResult {
  name: string;
  from: string;
  to: string;
  allowed: boolean;
  why: string;
  sent: number;
  delivered: number;
  lost: number;
  /** Longest silence at the receiver, from the flow's start to its stop (ms). */
  longestGapMs: number;
}

export interface TrafficReport {
  durationMs: number;
  flows: FlowResult[];
  allowedSent: number;
  allowedLost: number;
  allowedLongestGapMs: number;
  forbiddenSent: number;
  forbiddenDelivered: number;
  marks: Record<string, number>;
}

/** One flow.py per container: receives every flow to it, sends the flows from it. */
class FlowDaemon {
  private readonly child: ChildProcess;
  private readonly waiters: Array<{ match: (m: Record<string, unknown>) => boolean; resolve: (m: Record<string, unknown>) => void }> = [];
  private nextId = 1;
  private stderr = '';
  readonly ready: Promise<void>;

  constructor(readonly endpoint: FabricEndpoint) {
    this.child = startProcess([PYTHON, '-u', FLOW_PY, String(FLOW_PORT)], { netns: endpoint.netns });
    this.child.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-2000);
    });
    const rl = createInterface({ input: this.child.stdout! });
    rl.on('line', (line) => {
      let m: Record<string, unknown>;
      try {
        m = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      const i = this.waiters.findIndex((w) => w.match(m));
      if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(m);
    });
    this.ready = this.wait((m) => m['ready'] === true, 10_000);
  }

  private wait(match: (m: Record<string, unknown>) => boolean, timeoutMs: number): Promise<Record<string, unknown>> & Promise<never> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`flow daemon of ${this.endpoint.name}: no answer in ${timeoutMs} ms: ${this.stderr}`)), timeoutMs);
      this.waiters.push({ match, resolve: (m) => (clearTimeout(timer), resolve(m as never)) });
    }) as never;
  }

  send(cmd: Record<string, unknown>): void {
    this.child.stdin!.write(JSON.stringify(cmd) + '\n');
  }

  async stopFlow(flow: string): Promise<{ sent: number; errors: number }> {
    const answer = this.wait((m) => m['flow'] === flow, 10_000);
    this.send({ op: 'stop', flow });
    const m = (await answer) as Record<string, unknown>;
    if (typeof m['sent'] !== 'number') throw new Error(`flow daemon of ${this.endpoint.name}: stopping ${flow}: ${JSON.stringify(m)}`);
    return { sent: m['sent'], errors: Number(m['errors']) };
  }

  async report(): Promise<Record<string, { distinct: number; longestGapMs: number; firstMs: number; lastMs: number }>> {
    const id = this.nextId++;
    const answer = this.wait((m) => m['id'] === id, 10_000);
    this.send({ op: 'report', id });
    return ((await answer) as { flows: never })['flows'];
  }

  async close(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const gone = new Promise<void>((r) => this.child.once('exit', () => r()));
    this.child.kill('SIGTERM');
    await gone;
  }
}

/**
 * The steady flows on the default topology: allowed within acme (same node,
 * both directions across nodes) and initech (across nodes in sjc); forbidden
 * across workspaces (same node, across nodes), across regions, a spoofed
 * source (a2 sending as a1) and from x1, the sealed endpoint (no i6pn).
 */
export function defaultFlows(c: Cluster, pps = { allowed: 200, forbidden: 100 }): FlowSpec[] {
  const addr = (n: string): string => c.fabric.endpoint(n).address;
  const A = (name: string, from: string, to: string, why: string): FlowSpec => ({ name, from, to, allowed: true, why, pps: pps.allowed });
  const F = (name: string, from: string, to: string, why: string, spoofAs?: string): FlowSpec => ({
    name, from, to, allowed: false, why, pps: pps.forbidden, ...(spoofAs ? { spoofAs } : {}),
  });
  return [
    A('a1-a2', 'a1', 'a2', 'same-node'),
    A('a1-a3', 'a1', 'a3', 'cross-node'),
    A('a3-a1', 'a3', 'a1', 'cross-node'),
    A('i1-i2', 'i1', 'i2', 'cross-node'),
    F('a1-g1', 'a1', 'g1', 'cross-workspace'),
    F('a2-g2', 'a2', 'g2', 'cross-workspace'),
    F('a3-a4', 'a3', 'a4', 'cross-region'),
    F('a2-a3-spoof', 'a2', 'a3', 'spoofed', addr('a1')),
    F('x1-a3', 'x1', 'a3', 'sealed'),
  ];
}

export class Traffic {
  private readonly daemons = new Map<string, FlowDaemon>();
  private startedAt = 0;
  readonly marks: Record<string, number> = {};

  private constructor(
    private readonly c: Cluster,
    readonly flows: readonly FlowSpec[],
  ) {}

  static async start(c: Cluster, flows: readonly FlowSpec[]): Promise<Traffic> {
    const names = new Set(flows.flatMap((f) => [f.from, f.to]));
    const t = new Traffic(c, flows);
    try {
      for (const n of names) t.daemons.set(n, new FlowDaemon(c.fabric.endpoint(n)));
      await Promise.all([...t.daemons.values()].map((d) => d.ready));
    } catch (err) {
      await t.close();
      throw err;
    }
    t.startedAt = Date.now();
    for (const f of flows) {
      const to = c.fabric.endpoint(f.to);
      const from = c.fabric.endpoint(f.from);
      t.daemons.get(f.from)!.send({
        op: 'send', flow: f.name, dst: to.address, pps: f.pps, ...(f.spoofAs ? { src: f.spoofAs, mac: from.gatewayMac } : {}),
      });
    }
    return t;
  }

  /** Record a named instant (ms since the epoch) in the report. */
  mark(name: string): void {
    this.marks[name] = Date.now();
  }

  /** Stop every sender, let the last datagrams land, then read every receiver. */
  async stop(): Promise<TrafficReport> {
    const sent = new Map<string, number>();
    for (const f of this.flows) sent.set(f.name, (await this.daemons.get(f.from)!.stopFlow(f.name)).sent);
    const stoppedAt = Date.now();
    await sleep(300);
    const received = new Map<string, Awaited<ReturnType<FlowDaemon['report']>>>();
    for (const [n, d] of this.daemons) received.set(n, await d.report());
    await this.close();
    const flows = this.flows.map((f): FlowResult => {
      const r = received.get(f.to)?.[f.name];
      const s = sent.get(f.name) ?? 0;
      const delivered = r?.distinct ?? 0;
      // The silence before the first arrival and after the last count as gaps too.
      const gap = r ? Math.max(r.longestGapMs, r.firstMs - this.startedAt, stoppedAt - r.lastMs) : stoppedAt - this.startedAt;
      return { name: f.name, from: f.from, to: f.to, allowed: f.allowed, why: f.why, sent: s, delivered, lost: Math.max(0, s - delivered), longestGapMs: Math.round(gap) };
    });
    const allowed = flows.filter((f) => f.allowed);
    const forbidden = flows.filter((f) => !f.allowed);
    const sum = (xs: FlowResult[], k: 'sent' | 'lost' | 'delivered'): number => xs.reduce((a, f) => a + f[k], 0);
    return {
      durationMs: stoppedAt - this.startedAt,
      flows,
      allowedSent: sum(allowed, 'sent'),
      allowedLost: sum(allowed, 'lost'),
      allowedLongestGapMs: Math.max(0, ...allowed.map((f) => f.longestGapMs)),
      forbiddenSent: sum(forbidden, 'sent'),
      forbiddenDelivered: sum(forbidden, 'delivered'),
      marks: { ...this.marks },
    };
  }

  async close(): Promise<void> {
    await Promise.all([...this.daemons.values()].map((d) => d.close()));
  }
}

// ---------------------------------------------------------------- writes

export interface WriteRecord {
  op: 'add' | 'remove';
  /** Part of a move (remove on one node, add on another). */
  move: boolean;
  node: string;
  /** Known once acknowledged (an add's address is i6pnctl's answer). */
  address?: string;
  startedAt: number;
  ackedAt?: number;
  /** The i6pnctl error of a write that was not acknowledged (the driver retries with a new write). */
  error?: string;
  /** When every agent of the region reflected it (add: contains; remove: omits). */
  enforcedAt?: number;
}

export interface ChurnReport {
  writes: number;
  acked: number;
  failed: number;
  /** Acked writes whose effect is not in the store at the end. */
  ackedLost: number;
  enforced: number;
  notEnforced: number;
  overBound: number;
  boundMs: number;
  enforceMsP50: number;
  enforceMsMax: number;
  /** Longest run of failed writes (ms from the first failure to the next ack): the writer's outage. */
  longestWriteOutageMs: number;
  /** The distinct errors of failed writes (i6pnctl's first line), at most five. */
  errors: string[];
}

export interface ChurnOptions {
  region: string;
  /** Nodes to place on (default: the region's nodes). */
  nodes?: string[];
  workspace?: string;
  /** Pause between two writes (default 300 ms; i6pnctl's own start-up is most of a write). */
  intervalMs?: number;
}

/** Churned endpoints' names (and so their ifnames) are unique across every Churn of a process and across runs. */
const CHURN_RUN = Math.floor(Math.random() * 36 ** 4).toString(36).padStart(4, '0');
let churnSeq = 0;

/**
 * Membership churn through i6pnctl: adds, removes of endpoints whose add was
 * enforced, and moves. Churned endpoints have no container (their veths do
 * not exist); they are members in every agent's map of the region.
 */
export class Churn {
  readonly records: WriteRecord[] = [];
  private running = false;
  private loop?: Promise<void>;
  private watcher?: Promise<void>;
  /** Acked adds, enforced and not yet removed: what a remove or a move may take. */
  private live: Array<{ address: string; node: string }> = [];
  private readonly nodes: string[];

  constructor(
    private readonly c: Cluster,
    private readonly o: ChurnOptions,
  ) {
    this.nodes = o.nodes ?? c.topology.nodes.filter((n) => n.region === o.region).map((n) => n.name);
    if (this.nodes.length === 0) throw new Error(`churn: no node in region ${o.region}`);
  }

  start(): void {
    this.running = true;
    this.loop = this.writeLoop();
    this.watcher = this.watchLoop();
  }

  /** Stop writing; wait up to `boundMs` for the last writes to be enforced; report. */
  async stop(opts: { boundMs: number }): Promise<ChurnReport> {
    this.running = false;
    await this.loop;
    const deadline = Date.now() + opts.boundMs;
    while (Date.now() < deadline && this.records.some((r) => r.ackedAt && !r.enforcedAt)) await sleep(100);
    this.watching = false;
    await this.watcher;
    return this.report(opts.boundMs);
  }

  private watching = true;

  /**
   * Wait until `n` writes started at or after `since` are acknowledged; the
   * ms from `since` to the first of them, or -1 if that did not happen
   * within `timeoutMs` (the writer did not recover).
   */
  async ackedSince(since: number, n: number, timeoutMs: number): Promise<number> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const acked = this.records.filter((r) => r.startedAt >= since && r.ackedAt !== undefined);
      if (acked.length >= n) return Math.min(...acked.map((r) => r.ackedAt!)) - since;
      if (Date.now() > deadline) return -1;
      await sleep(100);
    }
  }

  private async write(op: 'add' | 'remove', node: string, move: boolean, address?: string): Promise<WriteRecord> {
    const ctl = this.c.ctl!;
    const r: WriteRecord = { op, move, node, startedAt: Date.now(), ...(address ? { address } : {}) };
    this.records.push(r);
    try {
      if (op === 'add') {
        const name = `c${CHURN_RUN}${(churnSeq++).toString(36)}`;
        const ep = await ctl.endpointAdd({ name, workspace: this.o.workspace ?? 'acme', node, i6pn: true }, this.o.region);
        r.address = ep.address;
      } else {
        await ctl.endpointRemove(address!);
      }
      r.ackedAt = Date.now();
    } catch (err) {
      // i6pnctl's own message (its stderr), else the error's.
      const stderr = (err as { result?: { stderr?: string } }).result?.stderr?.trim();
      r.error = (stderr || (err as Error).message).split('\n')[0]!.slice(0, 200);
    }
    return r;
  }

  private async writeLoop(): Promise<void> {
    let i = 0;
    while (this.running) {
      const kind = this.live.length < 3 ? 'add' : (['add', 'remove', 'move'] as const)[i % 3]!;
      i++;
      const node = this.nodes[i % this.nodes.length]!;
      if (kind === 'add') {
        await this.write('add', node, false);
      } else {
        const enforced = this.live.shift()!;
        const rm = await this.write('remove', enforced.node, kind === 'move', enforced.address);
        if (rm.ackedAt === undefined) this.live.push(enforced);
        else if (kind === 'move') {
          const other = this.nodes.find((n) => n !== enforced.node) ?? enforced.node;
          // The move's add: retried until acknowledged (the endpoint must land somewhere).
          while (this.running && (await this.write('add', other, true)).ackedAt === undefined) await sleep(this.o.intervalMs ?? 300);
        }
      }
      await sleep(this.o.intervalMs ?? 300);
    }
  }

  /** Poll every agent's pinned endpoints map of the region; mark acked writes enforced. */
  private async watchLoop(): Promise<void> {
    while (this.watching) {
      const pending = this.records.filter((r) => r.ackedAt !== undefined && r.enforcedAt === undefined);
      if (pending.length > 0) {
        const maps = this.nodes.map((n) => {
          try {
            return readPinnedEndpoints(this.c.node(n).bpffs);
          } catch {
            return null; // pins gone (a reboot): nothing enforced there yet
          }
        });
        const now = Date.now();
        for (const r of pending) {
          const ok = maps.every((m) => m !== null && m.has(r.address!) === (r.op === 'add'));
          if (!ok) continue;
          r.enforcedAt = now;
          if (r.op === 'add') this.live.push({ address: r.address!, node: r.node });
        }
      }
      await sleep(100);
    }
  }

  private async report(boundMs: number): Promise<ChurnReport> {
    const acked = this.records.filter((r) => r.ackedAt !== undefined);
    const lat = acked.filter((r) => r.enforcedAt !== undefined).map((r) => r.enforcedAt! - r.ackedAt!).sort((a, b) => a - b);
    const inStore = await storeAddresses(this.c, this.o.region);
    // The last acked write per address decides what the store must hold.
    const last = new Map<string, WriteRecord>();
    for (const r of acked) last.set(r.address!, r);
    const ackedLost = [...last.values()].filter((r) => inStore.has(r.address!) !== (r.op === 'add')).length;
    let outage = 0;
    let failingSince: number | null = null;
    for (const r of this.records) {
      if (r.error !== undefined) failingSince ??= r.startedAt;
      else if (r.ackedAt !== undefined && failingSince !== null) {
        outage = Math.max(outage, r.ackedAt - failingSince);
        failingSince = null;
      }
    }
    return {
      writes: this.records.length,
      acked: acked.length,
      failed: this.records.filter((r) => r.error !== undefined).length,
      ackedLost,
      enforced: lat.length,
      notEnforced: acked.length - lat.length,
      overBound: lat.filter((ms) => ms > boundMs).length + (acked.length - lat.length),
      boundMs,
      enforceMsP50: lat[Math.floor(lat.length / 2)] ?? 0,
      enforceMsMax: lat[lat.length - 1] ?? 0,
      longestWriteOutageMs: outage,
      errors: [...new Set(this.records.flatMap((r) => (r.error === undefined ? [] : [r.error])))].slice(0, 5),
    };
  }
}

// ---------------------------------------------------------------- the check

interface StoreMember {
  i6pn: boolean;
  node: string;
  workspaceId: number;
}

async function storeMembers(c: Cluster, region: string): Promise<Map<string, StoreMember>> {
  const store = await connectStore({ servers: c.nats!.url.split(','), name: 'i6pn-fault-check' });
  try {
    const { endpoints } = await listEndpoints(store, { region });
    return new Map(endpoints.map((e) => [e.address, { i6pn: e.i6pn, node: e.node, workspaceId: e.workspaceId }]));
  } finally {
    await store.close();
  }
}

async function storeAddresses(c: Cluster, region: string): Promise<Set<string>> {
  return new Set((await storeMembers(c, region)).keys());
}

/**
 * What each agent's pinned endpoints map and the store disagree on, as lines
 * (`node: address missing|extra|differs`); [] when every map equals the store
 * (same addresses; workspace, i6pn and local as the store says).
 */
export async function mapsVsStore(c: Cluster): Promise<string[]> {
  const problems: string[] = [];
  for (const region of c.topology.regions) {
    const want = await storeMembers(c, region);
    for (const n of c.topology.nodes.filter((x) => x.region === region)) {
      let have;
      try {
        have = readPinnedEndpoints(c.node(n.name).bpffs);
      } catch (err) {
        problems.push(`${n.name}: cannot read its pinned endpoints map: ${(err as Error).message}`);
        continue;
      }
      for (const [a, m] of want) {
        const h = have.get(a);
        if (!h) problems.push(`${n.name}: ${a} missing`);
        else if (h.i6pn !== m.i6pn || h.workspace !== m.workspaceId || h.local !== (m.node === n.name)) {
          problems.push(`${n.name}: ${a} differs (map ${JSON.stringify(h)}, store ${JSON.stringify(m)})`);
        }
      }
      for (const a of have.keys()) if (!want.has(a)) problems.push(`${n.name}: ${a} extra`);
    }
  }
  return problems;
}

/** Poll until every agent's maps equal the store; the ms it took. Throws with the differences after `timeoutMs`. */
export async function waitMapsEqualStore(c: Cluster, timeoutMs: number): Promise<number> {
  const t0 = Date.now();
  let last: string[] = [];
  for (;;) {
    try {
      last = await mapsVsStore(c);
      if (last.length === 0) return Date.now() - t0;
    } catch (err) {
      last = [`reading the store: ${(err as Error).message}`];
    }
    if (Date.now() - t0 > timeoutMs) {
      throw new Error(`maps != store after ${timeoutMs} ms (${last.length} differences):\n${last.slice(0, 10).join('\n')}`);
    }
    await sleep(200);
  }
}

// ---------------------------------------------------------------- figures

export interface FaultFigures {
  fault: string;
  forbiddenDelivered: number;
  allowedSent: number;
  allowedLost: number;
  allowedLongestGapMs: number;
  /** From the end of the fault until every agent's maps equal the store. */
  convergeMs: number;
  writes: number;
  ackedWrites: number;
  ackedWritesLost: number;
  enforceMsMax: number;
  /** Scenario-specific figures (recovery times, windows, counters). */
  extra: Record<string, number>;
  /** Guarantees that did not hold, as sentences ([] when all held). */
  violations: string[];
  traffic: TrafficReport;
  churn?: ChurnReport;
}

/**
 * The figures of one fault run and the guarantees every fault keeps:
 * nothing forbidden delivered, no acknowledged write lost, every acknowledged
 * write enforced within its bound; `allowedLossBudget` (default 0) is what
 * the scenario's design allows to be lost.
 */
export function figures(
  fault: string,
  r: { traffic: TrafficReport; churn?: ChurnReport; convergeMs: number; extra?: Record<string, number>; allowedLossBudget?: number; violations?: string[] },
): FaultFigures {
  const v = [...(r.violations ?? [])];
  if (r.traffic.forbiddenDelivered > 0) {
    const which = r.traffic.flows.filter((f) => !f.allowed && f.delivered > 0).map((f) => `${f.name} (${f.why}): ${f.delivered}`);
    v.push(`forbidden packets delivered: ${which.join(', ')}`);
  }
  if (r.traffic.forbiddenSent === 0) v.push('no forbidden packet was sent: the run proves nothing');
  if (r.traffic.allowedLost > (r.allowedLossBudget ?? 0)) {
    v.push(`allowed packets lost: ${r.traffic.allowedLost} (budget ${r.allowedLossBudget ?? 0}), longest gap ${r.traffic.allowedLongestGapMs} ms`);
  }
  if (r.churn) {
    if (r.churn.ackedLost > 0) v.push(`acknowledged writes lost: ${r.churn.ackedLost}`);
    if (r.churn.overBound > 0) v.push(`${r.churn.overBound} acknowledged writes not enforced within ${r.churn.boundMs} ms`);
    if (r.churn.acked === 0) v.push('no write was acknowledged: the run proves nothing about writes');
  }
  return {
    fault,
    forbiddenDelivered: r.traffic.forbiddenDelivered,
    allowedSent: r.traffic.allowedSent,
    allowedLost: r.traffic.allowedLost,
    allowedLongestGapMs: r.traffic.allowedLongestGapMs,
    convergeMs: r.convergeMs,
    writes: r.churn?.writes ?? 0,
    ackedWrites: r.churn?.acked ?? 0,
    ackedWritesLost: r.churn?.ackedLost ?? 0,
    enforceMsMax: r.churn?.enforceMsMax ?? 0,
    extra: r.extra ?? {},
    violations: v,
    traffic: r.traffic,
    ...(r.churn ? { churn: r.churn } : {}),
  };
}

/** One line for t.log and the soak's log. */
export function summary(f: FaultFigures): string {
  const extra = Object.entries(f.extra).map(([k, v]) => `${k}=${v}`).join(' ');
  return (
    `${f.fault}: forbidden delivered ${f.forbiddenDelivered}/${f.traffic.forbiddenSent}, allowed lost ${f.allowedLost}/${f.allowedSent} ` +
    `(longest gap ${f.allowedLongestGapMs} ms), converged in ${f.convergeMs} ms, writes ${f.ackedWrites}/${f.writes} acked, ` +
    `${f.ackedWritesLost} acked lost, enforce max ${f.enforceMsMax} ms${extra ? `, ${extra}` : ''}` +
    (f.violations.length ? ` — VIOLATIONS: ${f.violations.join('; ')}` : '')
  );
}
