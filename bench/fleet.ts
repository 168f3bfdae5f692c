/**
 * `make bench-fleet`: one region's fleet in a simulation (issue 11). N
 * followers, each the agent's own membership side without a dataplane, read
 * and follow the region's endpoints bucket on ONE nats-server under churn.
 *
 * - Each follower is what agent/main.ts wires: an AgentStore connection of
 *   its own (so the server pays one client and one pull consumer per
 *   follower, as with real agents), a MembershipSync (the decoder, the
 *   batches, the applied-state table) and a MembershipFollower (the lean
 *   pull reader, the full read and sweep, then the live read). The endpoints
 *   map is an in-memory fake of sync.ts's EndpointMap that counts, and
 *   notes the arrival of markers.
 * - The followers run in W worker processes (4 by default, N/W each), which
 *   are this file again (I6PN_BENCH_FLEET_WORKER set), driven by JSON lines
 *   on stdin and answering on stdout. The bench process is the writer.
 *
 * Per N (100 and 1000 by default):
 *
 * 1. A fresh nats-server; the bucket endpointsBucket(region), history
 *    ENDPOINTS_HISTORY, seeded with 10 thousand endpoints (published to its
 *    subjects, as kv.put sends them; the stream's last sequence checked).
 * 2. The workers connect every follower, then all followers start at once:
 *    each reads the region whole (a thundering herd); the time until all N
 *    have finished their initial read (MembershipFollower's onInitialSync).
 * 3. Churn at 1 thousand updates a second for 30 s (half new endpoints, half
 *    deletes of the oldest live ones, on a 10 ms schedule). Every new
 *    endpoint is a marker: its endpoint id carries a tag, a sequence number
 *    and the writer's CLOCK_MONOTONIC time (µs, low 32 bits) taken just
 *    before the publish; the fake map of each follower computes
 *    now − written when the sync hands it the batch that holds it. So the
 *    latency is KV write → applied in that follower, for every follower and
 *    every marker. Beside it, the agent's own
 *    i6pn_membership_apply_latency_seconds (the message's server time → map
 *    write), summed over the followers.
 * 4. CPU (utime + stime from /proc) of nats-server, the workers (the
 *    followers) and the writer, and the machine's busy time from /proc/stat,
 *    over the herd and over the churn; kept up: every follower saw every
 *    marker, within a second of the last write, and ended with the region's
 *    exact size and the stream's last revision.
 */
import { createInterface } from 'node:readline';
import { randomFillSync } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';

import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, headers, type NatsConnection } from '@nats-io/transport-node';

import type { SyncState, UpsertResult } from '../agent/bpf/dataplane.js';
import { createLogger } from '../agent/log.js';
import { AgentMetrics } from '../agent/metrics.js';
import { AgentStore } from '../agent/store-client.js';
import { MembershipSync, type EndpointMap } from '../agent/sync.js';
import { EndpointTable, type EndpointId } from '../agent/table.js';
import { MembershipFollower } from '../agent/watch.js';
import { endpointIdOf, formatAddress, workspaceIdHex, writeEndpointAddress } from '../lib/address.js';
import { ENDPOINTS_HISTORY, agentInboxPrefix, endpointsBucket } from '../lib/schema.js';
import { startNats } from '../test/helpers/nats.js';
import { cleanup, onCleanup, sh, spawnIn } from './lib/netns.js';
import { sleep } from '../test/fabric/exec.js';
import { REPO_DIR, log, printTable, saveSection, secondsSince, type Goal, type Table } from './lib/results.js';

const SIZES = (process.env.I6PN_BENCH_FLEET_N ?? '100,1000').split(',').map(Number).filter((n) => n > 0);
const SEED = Number(process.env.I6PN_BENCH_FLEET_SEED ?? 10_000);
const RATE = Number(process.env.I6PN_BENCH_FLEET_RATE ?? 1000);
const CHURN_SECONDS = Number(process.env.I6PN_BENCH_FLEET_SECONDS ?? 30);
const WORKERS = Number(process.env.I6PN_BENCH_FLEET_WORKERS ?? 4);
/** Seconds allowed for all followers' initial read, and for the markers after the last write (keeps `make bench` bounded). */
const HERD_DEADLINE = Number(process.env.I6PN_BENCH_FLEET_HERD_DEADLINE ?? 40);
const DRAIN_DEADLINE = Number(process.env.I6PN_BENCH_FLEET_DRAIN ?? 10);
const GOAL_N = 1000;
const GOAL_P99_MS = 100;
const REGION = 'fleet';
const REGION_ID = 0x0f1e;
const BUCKET = endpointsBucket(REGION);
const WORKSPACES = 64;
const TICK_MS = 10;
/** The start of the churn is slower (the first live messages after the initial read): a steady-state figure leaves it out, as bench/agent.ts does. */
const STEADY_AFTER_S = 3;
/** The top byte of a marker's endpoint id (seed ids never have it). */
const MARKER_TAG = 0xa1;

// ---------------------------------------------------------------- clocks

/** CLOCK_MONOTONIC in ms: one clock for every process of the machine. */
const monoMs = (): number => Number(process.hrtime.bigint()) / 1e6;
/** CLOCK_MONOTONIC in µs, low 32 bits (what a marker carries). */
const monoUs32 = (): number => Number((process.hrtime.bigint() / 1000n) & 0xffffffffn);

// ---------------------------------------------------------------- latency histogram

/** Log buckets of 2 % from 1 µs to ~7 minutes: exact enough for p50/p99, small enough to ship between processes. */
const H_STEP = Math.log(1.02);
const H_BUCKETS = 1000;
const bucketOf = (us: number): number => (us < 1 ? 0 : Math.min(H_BUCKETS - 1, Math.floor(Math.log(us) / H_STEP)));
/** The upper bound of a bucket, in ms (a percentile is read as "at most"). */
const boundMs = (b: number): number => Math.exp((b + 1) * H_STEP) / 1000;

class Hist {
  readonly counts = new Uint32Array(H_BUCKETS);
  n = 0;
  maxUs = 0;
  add(us: number): void {
    this.counts[bucketOf(us)]!++;
    this.n++;
    if (us > this.maxUs) this.maxUs = us;
  }
  merge(o: HistWire): void {
    for (const [b, c] of o.c) this.counts[b]! += c;
    this.n += o.n;
    this.maxUs = Math.max(this.maxUs, o.max);
  }
  /**
   * p in 0..100, in ms (bucket upper bound, at most the maximum). Out of
   * `total` observations when given: the ones missing count as never
   * arrived (Infinity when the percentile falls among them).
   */
  pct(p: number, total = this.n): number {
    if (!total) return NaN;
    const want = Math.max(1, Math.ceil((p / 100) * total));
    if (want > this.n) return Infinity;
    let acc = 0;
    for (let b = 0; b < H_BUCKETS; b++) {
      acc += this.counts[b]!;
      if (acc >= want) return Math.min(boundMs(b), this.maxUs / 1000);
    }
    return this.maxUs / 1000;
  }
  wire(): HistWire {
    const c: [number, number][] = [];
    this.counts.forEach((v, b) => v && c.push([b, v]));
    return { c, n: this.n, max: this.maxUs };
  }
}
interface HistWire {
  c: [number, number][];
  n: number;
  max: number;
}

// ---------------------------------------------------------------- records

function workspaceId(i: number): number {
  return 0x5000_0000 + (i % WORKSPACES);
}

/** The entry as the controller writes it, under its key in the region's bucket (`<ws 8 hex>.<ep 16 hex>`). */
function record(addr: Uint8Array, node: string, createdAt: string): { key: string; json: string } {
  const ws = ((addr[2]! << 24) | (addr[3]! << 16) | (addr[4]! << 8) | addr[5]!) >>> 0;
  const rec = {
    v: 1,
    address: formatAddress(addr),
    workspace: `ws-${ws.toString(16)}`,
    workspaceId: ws,
    region: REGION,
    regionId: REGION_ID,
    node,
    ifname: `v${endpointIdOf(addr).slice(0, 12)}`,
    i6pn: true,
    createdAt,
  };
  return { key: keyOf(addr), json: JSON.stringify(rec) };
}

function keyOf(addr: Uint8Array): string {
  const ws = ((addr[2]! << 24) | (addr[3]! << 16) | (addr[4]! << 8) | addr[5]!) >>> 0;
  return `${workspaceIdHex(ws)}.${endpointIdOf(addr)}`;
}

function address(ws: number): Uint8Array {
  const a = new Uint8Array(16);
  const v = new DataView(a.buffer);
  v.setUint16(0, 0xfdaa);
  v.setUint32(2, ws);
  v.setUint16(6, REGION_ID);
  return a;
}

/** A seed endpoint: a random id whose top bit is clear (never a marker's tag). */
function seedAddress(i: number): Uint8Array {
  const a = address(workspaceId(i));
  randomFillSync(a, 8, 8);
  a[8]! &= 0x7f;
  return a;
}

/** A marker: tag, sequence (24 bits), the writer's monotonic µs (32 bits). */
function markerAddress(seq: number, us32: number): Uint8Array {
  const a = address(workspaceId(seq));
  const v = new DataView(a.buffer);
  v.setUint32(8, ((MARKER_TAG << 24) | (seq & 0xffffff)) >>> 0);
  v.setUint32(12, us32);
  return a;
}

// ---------------------------------------------------------------- worker: the followers

/**
 * sync.ts's EndpointMap without a kernel: the entries it holds (in the
 * agent's own typed-array table, so a sweep after a restarted read lists
 * them as the kernel would), counts, and the markers' arrival.
 */
class FakeMap implements EndpointMap {
  upserts = 0;
  deletes = 0;
  batches = 0;
  state: SyncState = { revision: 0, stream: 0n, region: 0 };
  private readonly entries = new EndpointTable();
  private readonly id: EndpointId = { workspace: 0, hi: 0, lo: 0 };
  constructor(private readonly onMarker: (seq: number, latencyUs: number, nowUs32: number) => void) {}
  private idAt(keys: Buffer, at: number): EndpointId {
    this.id.workspace = keys.readUInt32BE(at + 2);
    this.id.hi = keys.readUInt32BE(at + 8);
    this.id.lo = keys.readUInt32BE(at + 12);
    return this.id;
  }
  upsertEndpointBatch(keys: Buffer, _values: Buffer, count: number): UpsertResult {
    this.batches++;
    this.upserts += count;
    let now = -1;
    for (let i = 0; i < count; i++) {
      const id = this.idAt(keys, i * 16);
      this.entries.set(id, 0);
      if (id.hi >>> 24 !== MARKER_TAG) continue;
      if (now < 0) now = monoUs32();
      this.onMarker(id.hi & 0xffffff, (now - id.lo) >>> 0, now);
    }
    return { applied: count, failed: [] };
  }
  deleteEndpointBatch(keys: Buffer, count: number): number {
    this.batches++;
    let n = 0;
    for (let i = 0; i < count; i++) if (this.entries.delete(this.idAt(keys, i * 16))) n++;
    this.deletes += n;
    return n;
  }
  *endpointAddresses(): Iterable<Uint8Array[]> {
    // Nothing in this table is ever marked: "unmarked" is every entry.
    const all: Uint8Array[] = [];
    this.entries.forEachUnmarked((id) => {
      const a = new Uint8Array(16);
      writeEndpointAddress(a, 0, id.workspace, REGION_ID, id.hi, id.lo);
      all.push(a);
    });
    for (let i = 0; i < all.length; i += 4096) yield all.slice(i, i + 4096);
  }
  endpointsEmpty(): boolean {
    return this.entries.size === 0;
  }
  get size(): number {
    return this.entries.size;
  }
  writeSyncState(st: SyncState): void {
    this.state = st;
  }
}

interface Sim {
  node: string;
  store: AgentStore;
  sync: MembershipSync;
  follower: MembershipFollower;
  map: FakeMap;
  seen: Uint8Array;
  /** The server's timestamp (wall clock, ms) of each marker's message, as the reader passed it to ingest. */
  stored: Float64Array;
  seenCount: number;
  /** When the last new marker was applied (CLOCK_MONOTONIC ms). */
  lastMarkerAtMs: number;
  dupes: number;
  initialAtMs: number;
  reconnects: number;
}

interface WorkerConfig {
  index: number;
  url: string;
  first: number;
  count: number;
  n: number;
}

async function worker(): Promise<void> {
  const cfg = JSON.parse(process.env.I6PN_BENCH_FLEET_WORKER!) as WorkerConfig;
  const say = (o: unknown): void => void process.stdout.write(JSON.stringify(o) + '\n');
  let logLines = 0;
  const dest = {
    write(line: string): void {
      if (++logLines <= 10) process.stderr.write(`[fleet worker ${cfg.index}] ${line.slice(0, 1000)}`);
    },
  };
  const log = createLogger('warn', { worker: cfg.index }, dest);
  // One AgentMetrics for the process: its constructor starts prom-client's default
  // collectors (an event-loop monitor, a GC observer), which a real agent pays once.
  const metrics = new AgentMetrics({ version: 'fleet-bench', node: `worker-${cfg.index}`, region: REGION, mode: 'enforce' }, log);
  // Latency, and its two legs: writer → stored by the server (the message's timestamp), stored → applied.
  const hist = new Hist();
  const toServer = new Hist();
  const fromServer = new Hist();
  const bySecond = new Map<number, [Hist, Hist, Hist]>();
  // The server's timestamps are wall-clock time; the markers' are CLOCK_MONOTONIC (±1 ms between the two).
  const wallMinusMono = Date.now() - monoMs();
  let churnStartUs32 = 0;
  /** Messages the followers' readers handed to their syncs (live reads). */
  let ingested = 0;
  let churning = false;
  const sims: Sim[] = [];
  const t0 = monoMs();

  const make = async (i: number): Promise<Sim> => {
    const node = `node-${i}`;
    const sim = { node, seen: new Uint8Array(0), stored: new Float64Array(0), seenCount: 0, lastMarkerAtMs: 0, dupes: 0, initialAtMs: NaN, reconnects: 0 } as Sim;
    const room = (seq: number): void => {
      if (seq < sim.seen.length) return;
      const len = Math.max(seq + 1, sim.seen.length * 2, 1024);
      const seen = new Uint8Array(len);
      seen.set(sim.seen);
      sim.seen = seen;
      const stored = new Float64Array(len);
      stored.set(sim.stored);
      sim.stored = stored;
    };
    sim.map = new FakeMap((seq, us, now) => {
      room(seq);
      if (sim.seen[seq]) {
        sim.dupes++;
        return;
      }
      sim.seen[seq] = 1;
      sim.seenCount++;
      hist.add(us);
      // now and the write time in ms of the wall clock, to set beside the server's timestamp.
      const mono = monoMs();
      sim.lastMarkerAtMs = mono;
      const nowMs = mono + wallMinusMono;
      const storedMs = sim.stored[seq]!;
      const toUs = Math.max(0, (storedMs - (nowMs - us / 1000)) * 1000);
      const fromUs = Math.max(0, (nowMs - storedMs) * 1000);
      if (storedMs) {
        toServer.add(toUs);
        fromServer.add(fromUs);
      }
      if (churning) {
        // By the second of the churn the marker was written in.
        const sec = Math.floor(((now - us - churnStartUs32) >>> 0) / 1e6);
        let h = bySecond.get(sec);
        if (!h) bySecond.set(sec, (h = [new Hist(), new Hist(), new Hist()]));
        h[0].add(us);
        if (storedMs) {
          h[1].add(toUs);
          h[2].add(fromUs);
        }
      }
    });
    sim.store = await AgentStore.connect({
      servers: [cfg.url],
      creds: undefined,
      name: `i6pn-agent@${node}`,
      inboxPrefix: agentInboxPrefix(node),
      log,
      onConnected: () => {},
      onReconnect: () => {
        sim.reconnects++;
        sim.follower?.resume();
      },
    });
    sim.sync = new MembershipSync({ map: sim.map, node, region: REGION, regionId: REGION_ID, ifindexOf: () => undefined, onLocalsChanged: () => {}, metrics, log });
    // Note the server's timestamp of each marker on its way in (the sync keeps it only for its histogram).
    const ingest = sim.sync.ingest.bind(sim.sync);
    sim.sync.ingest = (key, data, revision, op, createdMs) => {
      ingested++;
      // <ws 8 hex>.<ep 16 hex>: a marker's id starts with its tag.
      if (key.charCodeAt(9) === 97 /* a */ && key.charCodeAt(10) === 49 /* 1 */ && op === 0) {
        const seq = parseInt(key.slice(11, 17), 16);
        room(seq);
        sim.stored[seq] = createdMs;
      }
      return ingest(key, data, revision, op, createdMs);
    };
    sim.follower = new MembershipFollower({
      nc: sim.store.nc,
      inboxPrefix: sim.store.inboxPrefix,
      jsm: sim.store.jsm,
      region: REGION,
      regionId: REGION_ID,
      sync: sim.sync,
      metrics,
      log,
      // The agent's default; the bench ends before the first periodic reconcile.
      reconcileIntervalMs: 300_000,
      position: () => sim.map.state,
      adoptedLocals: () => [],
      onInitialSync: () => {
        sim.initialAtMs = monoMs();
        say({ t: 'init', node, atMs: sim.initialAtMs });
      },
    });
    return sim;
  };

  // Connect in waves (a thousand TLS-less connects at once only queue in the accept backlog).
  for (let i = 0; i < cfg.count; i += 25) {
    const wave = await Promise.all(Array.from({ length: Math.min(25, cfg.count - i) }, (_, j) => make(cfg.first + i + j)));
    sims.push(...wave);
  }
  say({ t: 'connected', ms: monoMs() - t0 });

  // Where the followers are, every half second, unasked: a worker whose followers are behind answers
  // a question late (its event loop serves 250 sockets first), and the bench must not wait on it.
  let target = Infinity;
  const tick = (): void => {
    let done = 0;
    let min = Infinity;
    for (const s of sims) {
      if (s.seenCount >= target) done++;
      min = Math.min(min, s.seenCount);
    }
    say({ t: 'tick', atMs: monoMs(), ingested, target: Number.isFinite(target) ? target : null, done, min });
  };
  const ticker = setInterval(tick, 500);

  const rl = createInterface({ input: process.stdin });
  for await (const line of rl) {
    const cmd = JSON.parse(line) as { t: string; markers?: number; startUs32?: number };
    if (cmd.t === 'start') {
      for (const s of sims) s.follower.start();
    } else if (cmd.t === 'churn') {
      churnStartUs32 = cmd.startUs32!;
      churning = true;
    } else if (cmd.t === 'target') {
      target = cmd.markers!;
      tick();
    } else if (cmd.t === 'report') {
      // Stop the followers first: the report then waits for nothing.
      clearInterval(ticker);
      churning = false;
      await Promise.all(sims.map(async (s) => {
        await Promise.race([s.follower.stop().catch(() => undefined), sleep(5000)]);
        await s.store.nc.close().catch(() => undefined);
      }));
      const buckets: { le: string; count: number }[] = [];
      for (const v of (await metrics.applyLatency.get()).values) {
        if (v.metricName?.endsWith('_bucket')) buckets.push({ le: String(v.labels.le), count: v.value });
      }
      say({
        t: 'report',
        hist: hist.wire(),
        toServer: toServer.wire(),
        fromServer: fromServer.wire(),
        bySecond: [...bySecond.entries()].map(([s, h]) => [s, ...h.map((x) => x.wire())]),
        agentHistogram: buckets,
        logLines,
        followers: sims.map((s) => ({
          node: s.node,
          initialAtMs: s.initialAtMs,
          seen: s.seenCount,
          lastMarkerAtMs: s.lastMarkerAtMs,
          dupes: s.dupes,
          size: s.sync.size,
          mapSize: s.map.size,
          lastRevision: s.sync.lastRevision,
          upserts: s.map.upserts,
          deletes: s.map.deletes,
          batches: s.map.batches,
          reconnects: s.reconnects,
        })),
      });
    } else if (cmd.t === 'stop') {
      for (const s of sims) if (!s.store.nc.isClosed()) void s.store.nc.close();
      say({ t: 'stopped' });
      process.exit(0);
    }
  }
  process.exit(0);
}

// ---------------------------------------------------------------- bench process: CPU accounting

const CLK_TCK = Number(sh(['getconf', 'CLK_TCK'], { allowFail: true }).trim()) || 100;

/** utime + stime of a process, in seconds (NaN once it is gone). */
function cpuOf(pid: number): number {
  try {
    const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** The machine's CPU time by kind, in seconds (all cores). */
function machineCpu(): { busy: number; steal: number; idle: number } {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user, nice, system, idle, iowait, irq, softirq, steal] = f as [number, number, number, number, number, number, number, number];
  return { busy: (user + nice + system + irq + softirq) / CLK_TCK, steal: steal / CLK_TCK, idle: (idle + iowait) / CLK_TCK };
}

interface CpuSample {
  atMs: number;
  server: number;
  workers: number;
  writer: number;
  machine: { busy: number; steal: number; idle: number };
}

/** The CPU split of a window, each as % of one core. */
interface CpuSplit {
  seconds: number;
  serverPct: number;
  followersPct: number;
  writerPct: number;
  /** Busy time of the machine not in the three above (other work on the machine, kernel threads). */
  otherPct: number;
  machineBusyPct: number;
  stealPct: number;
}

function sample(serverPid: number, workers: ChildProcess[]): CpuSample {
  const u = process.cpuUsage();
  return {
    atMs: monoMs(),
    server: cpuOf(serverPid),
    workers: workers.reduce((a, w) => a + cpuOf(w.pid!), 0),
    writer: (u.user + u.system) / 1e6,
    machine: machineCpu(),
  };
}

function split(a: CpuSample, b: CpuSample): CpuSplit {
  const s = (b.atMs - a.atMs) / 1000;
  const pct = (x: number): number => (100 * x) / s;
  const server = b.server - a.server;
  const followers = b.workers - a.workers;
  const writer = b.writer - a.writer;
  const busy = b.machine.busy - a.machine.busy;
  return {
    seconds: s,
    serverPct: pct(server),
    followersPct: pct(followers),
    writerPct: pct(writer),
    otherPct: pct(Math.max(0, busy - server - followers - writer)),
    machineBusyPct: pct(busy),
    stealPct: pct(b.machine.steal - a.machine.steal),
  };
}

/** The nats-server this process started (startNats runs it under setpriv, which execs it: our child). */
function natsPid(port: number): number {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      const ppid = Number(stat.split(') ')[1]!.split(' ')[1]);
      if (ppid !== process.pid || !stat.includes('(nats-server)')) continue;
      if (readFileSync(`/proc/${d}/cmdline`, 'utf8').split('\0').includes(String(port))) return Number(d);
    } catch {
      /* gone */
    }
  }
  throw new Error(`no nats-server child on port ${port}`);
}

// ---------------------------------------------------------------- bench process: workers

interface Worker {
  proc: ChildProcess;
  send(o: unknown): void;
  next(t: string, timeoutMs: number): Promise<Record<string, unknown>>;
  onInit: (node: string, atMs: number) => void;
  /** The worker's half-second reports, oldest first. */
  ticks: Tick[];
}

interface Tick {
  atMs: number;
  ingested: number;
  target: number | null;
  done: number;
  min: number;
}

/** Messages the workers' followers had read at `t` (ms, CLOCK_MONOTONIC), interpolated between their ticks; waits up to 10 s for a tick past `t`. */
async function ingestedAt(workers: Worker[], t: number): Promise<number> {
  const deadline = monoMs() + 10_000;
  let sum = 0;
  for (const w of workers) {
    while ((w.ticks.at(-1)?.atMs ?? 0) < t && monoMs() < deadline && w.proc.exitCode === null) await sleep(50);
    const ts = w.ticks;
    const j = ts.findIndex((x) => x.atMs >= t);
    if (j < 0) sum += ts.at(-1)?.ingested ?? 0;
    else if (j === 0) sum += ts[0]!.ingested;
    else {
      const a = ts[j - 1]!;
      const b = ts[j]!;
      sum += a.ingested + ((b.ingested - a.ingested) * (t - a.atMs)) / (b.atMs - a.atMs || 1);
    }
  }
  return sum;
}

function startWorker(cfg: WorkerConfig): Worker {
  const argv = [
    process.execPath,
    // Extra node flags for a diagnosis, e.g. I6PN_BENCH_FLEET_NODE_ARGS=--trace-gc (its lines go to stderr through the line protocol's fallback).
    ...(process.env.I6PN_BENCH_FLEET_NODE_ARGS ?? '').split(' ').filter(Boolean),
    '--import=tsx',
    join(REPO_DIR, 'bench/fleet.ts'),
  ];
  const proc = spawnIn(null, argv, {
    stdio: 'pipe',
    env: { ...process.env, I6PN_BENCH_FLEET_WORKER: JSON.stringify(cfg) },
  });
  proc.stderr!.on('data', (d: Buffer) => process.stderr.write(d.toString().slice(0, 4000)));
  const waiting = new Map<string, { resolve: (o: Record<string, unknown>) => void; reject: (e: Error) => void }>();
  const early = new Map<string, Record<string, unknown>>();
  const w: Worker = {
    proc,
    send: (o) => void proc.stdin!.write(JSON.stringify(o) + '\n'),
    onInit: () => {},
    ticks: [],
    next: (t, timeoutMs) =>
      new Promise((resolve, reject) => {
        const got = early.get(t);
        if (got) {
          early.delete(t);
          resolve(got);
          return;
        }
        const timer = setTimeout(() => {
          waiting.delete(t);
          reject(new Error(`worker ${cfg.index}: no ${t} within ${timeoutMs / 1000} s`));
        }, timeoutMs);
        waiting.set(t, {
          resolve: (o) => {
            clearTimeout(timer);
            resolve(o);
          },
          reject: (e) => {
            clearTimeout(timer);
            reject(e);
          },
        });
      }),
  };
  createInterface({ input: proc.stdout! }).on('line', (line) => {
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line) as Record<string, unknown>;
    } catch {
      process.stderr.write(`[fleet worker ${cfg.index}] ${line}\n`);
      return;
    }
    if (o.t === 'init') {
      w.onInit(o.node as string, o.atMs as number);
      return;
    }
    if (o.t === 'tick') {
      w.ticks.push(o as unknown as Tick);
      return;
    }
    const wt = waiting.get(o.t as string);
    if (wt) {
      waiting.delete(o.t as string);
      wt.resolve(o);
    } else {
      early.set(o.t as string, o);
    }
  });
  proc.on('exit', (code) => {
    for (const [, wt] of waiting) wt.reject(new Error(`worker ${cfg.index} exited (${code})`));
    waiting.clear();
  });
  return w;
}

// ---------------------------------------------------------------- bench process: one fleet

interface FollowerReport {
  node: string;
  initialAtMs: number;
  seen: number;
  lastMarkerAtMs: number;
  dupes: number;
  size: number;
  mapSize: number;
  lastRevision: number;
  upserts: number;
  deletes: number;
  batches: number;
  reconnects: number;
}

interface Latency {
  p50: number;
  p99: number;
  max: number;
  count: number;
}

interface FleetRun {
  n: number;
  workers: number;
  loadAvg: number[];
  seed: number;
  connectSeconds: number;
  /** Initial reads done → the followers idle (the churn starts then). */
  settleSeconds: number;
  herd: {
    firstSeconds: number;
    p50Seconds: number;
    lastSeconds: number;
    /** Followers done with their initial read by the deadline. */
    done: number;
    /** Messages the followers read (all of the initial reads, and the start of the churn if some were late). */
    messages: number;
    cpu: CpuSplit;
    serverUsPerMessage: number;
    followerUsPerMessage: number;
  };
  churn: {
    targetRate: number;
    writes: number;
    puts: number;
    dels: number;
    seconds: number;
    achievedRate: number;
    behindTicks: number;
    cpu: CpuSplit;
    /** Messages the followers read during the churn (all followers together). */
    messages: number;
    /** CPU per message read by a follower, in µs: of nats-server (its fan-out), of the followers. */
    serverUsPerMessage: number;
    followerUsPerMessage: number;
    /** From the last write until every follower had every marker (or the deadline). */
    drainSeconds: number;
    drainCpu: CpuSplit;
  };
  /** Over every (follower, marker) pair; Infinity where the pairs never applied reach the percentile. */
  latencyMs: Latency;
  deliveredMaxMs: number;
  /** Markers written after the first STEADY_AFTER_S seconds of the churn, those applied. */
  steadyMs: Latency;
  /** The first leg: the writer's clock → the message's server timestamp. */
  toServerMs: Latency;
  /** The second leg: the message's server timestamp → applied in a follower. */
  fromServerMs: Latency;
  bySecond: { second: number; p50: number; p99: number; max: number; toServerP99: number; fromServerP99: number }[];
  agentHistogram: { p50: string; p99: string; count: number };
  markers: number;
  followersAllMarkers: number;
  minMarkersSeen: number;
  followersExact: number;
  duplicateMarkers: number;
  reconnects: number;
  logLines: number;
  keptUp: boolean;
  /** Messages applied per follower (upserts + deletes given to the map) over the whole run. */
  appliedPerFollower: number;
  streamLastSeq: number;
}

async function runFleet(n: number): Promise<FleetRun> {
  const loadAvg = loadavg().map((x) => Math.round(x * 100) / 100);
  log(`fleet of ${n}: load average ${loadAvg.join(' ')}`);
  const nats = await startNats({ host: '127.0.0.1' });
  onCleanup(() => void nats.destroy());
  const serverPid = natsPid(nats.port);
  const nc = await connect({ servers: nats.url, name: 'fleet-bench-writer' });
  const jsm = await jetstreamManager(nc);
  await new Kvm(jetstream(nc)).create(BUCKET, { history: ENDPOINTS_HISTORY });
  const enc = new TextEncoder();
  const workers: Worker[] = [];
  try {
    // 1. The region.
    const live: Uint8Array[] = [];
    const createdAt = new Date().toISOString();
    for (let i = 0; i < SEED; i += 2000) {
      for (let j = i; j < Math.min(SEED, i + 2000); j++) {
        const a = seedAddress(j);
        live.push(a);
        const r = record(a, `node-${j % n}`, createdAt);
        nc.publish(`$KV.${BUCKET}.${r.key}`, enc.encode(r.json));
      }
      await nc.flush();
    }
    await waitLastSeq(jsm, SEED);
    log(`seeded ${SEED} endpoints into ${BUCKET}`);

    // 2. The followers: connect, then all start at once.
    const w = Math.max(1, Math.min(WORKERS, n));
    const tc = monoMs();
    for (let k = 0, first = 0; k < w; k++) {
      const count = Math.floor(n / w) + (k < n % w ? 1 : 0);
      workers.push(startWorker({ index: k, url: nats.url, first, count, n }));
      first += count;
    }
    await Promise.all(workers.map((wk) => wk.next('connected', 120_000)));
    const connectSeconds = (monoMs() - tc) / 1000;
    log(`${n} followers connected in ${connectSeconds.toFixed(1)} s (${w} processes, a connection each)`);

    const initial: number[] = [];
    let allInitial!: () => void;
    const allDone = new Promise<void>((r) => (allInitial = r));
    for (const wk of workers) {
      wk.onInit = (_node, atMs) => {
        initial.push(atMs);
        if (initial.length === n) allInitial();
      };
    }
    const procs = workers.map((x) => x.proc);
    const h0 = sample(serverPid, procs);
    for (const wk of workers) wk.send({ t: 'start' });
    await Promise.race([allDone, sleep(HERD_DEADLINE * 1000)]);
    const h1 = sample(serverPid, procs);
    const herdMessages = await ingestedAt(workers, h1.atMs);
    const sorted = initial.map((x) => (x - h0.atMs) / 1000).sort((a, b) => a - b);
    const herd = {
      firstSeconds: sorted[0] ?? NaN,
      p50Seconds: sorted.length === n ? sorted[Math.ceil(n / 2) - 1]! : NaN,
      lastSeconds: sorted.length === n ? sorted.at(-1)! : NaN,
      done: sorted.length,
      messages: Math.round(herdMessages),
      cpu: split(h0, h1),
      serverUsPerMessage: NaN,
      followerUsPerMessage: NaN,
    };
    herd.serverUsPerMessage = (herd.cpu.serverPct * herd.cpu.seconds * 1e4) / herd.messages;
    herd.followerUsPerMessage = (herd.cpu.followersPct * herd.cpu.seconds * 1e4) / herd.messages;
    log(`initial read: ${herd.done} of ${n} followers, all done ${Number.isNaN(herd.lastSeconds) ? `not within ${HERD_DEADLINE} s (${Math.round(herdMessages)} of ${n * SEED} messages read)` : `after ${herd.lastSeconds.toFixed(2)} s`}; nats-server ${herd.cpu.serverPct.toFixed(0)} %, followers ${herd.cpu.followersPct.toFixed(0)} %, other ${herd.cpu.otherPct.toFixed(0)} % of a core`);
    // The churn starts on settled followers (as bench/agent.ts does): their CPU under 10 % of a core for half a second, or 15 s.
    // A fleet still in its initial read is churned all the same: its markers are measured as they arrive, or counted as not delivered.
    const settleSeconds = await waitIdle(procs, herd.done === n ? 15 : 0);
    log(`followers idle after ${settleSeconds.toFixed(1)} s`);

    // 3. Churn.
    const delHeaders = headers();
    delHeaders.set('KV-Operation', 'DEL');
    const total = Math.round(RATE * CHURN_SECONDS);
    const perTick = (RATE * TICK_MS) / 1000;
    let writes = 0;
    let puts = 0;
    let dels = 0;
    let oldest = 0;
    let behind = 0;
    for (const wk of workers) wk.send({ t: 'churn', startUs32: monoUs32() });
    const c0 = sample(serverPid, procs);
    const start = performance.now();
    log(`churn: ${RATE}/s for ${CHURN_SECONDS} s (half new endpoints, each a marker; half deletes)`);
    while (writes < total) {
      const due = Math.min(total, Math.floor(((performance.now() - start) / TICK_MS + 1) * perTick));
      if (due - writes > RATE) behind++;
      for (; writes < due; writes++) {
        if (writes % 2 === 0) {
          const seq = puts++;
          const a = markerAddress(seq, monoUs32());
          const r = record(a, `node-${seq % n}`, new Date().toISOString());
          nc.publish(`$KV.${BUCKET}.${r.key}`, enc.encode(r.json));
          live.push(a);
        } else {
          dels++;
          nc.publish(`$KV.${BUCKET}.${keyOf(live[oldest++]!)}`, undefined, { headers: delHeaders });
        }
      }
      await sleep(TICK_MS / 2);
    }
    const lastWrite = performance.now();
    const lastWriteMono = monoMs();
    // The server may be too busy to answer soon: the stream's count below says what it stored.
    await Promise.race([nc.flush(), sleep(5000)]);
    const c1 = sample(serverPid, procs);
    for (const wk of workers) wk.send({ t: 'target', markers: puts });
    const churnSeconds = (lastWrite - start) / 1000;
    log(`churn: ${writes} writes in ${churnSeconds.toFixed(1)} s; waiting for every follower to have every marker`);

    // Drain: every follower has every marker, or the deadline.
    let done = 0;
    let minSeen = 0;
    for (;;) {
      const last = workers.map((wk) => wk.ticks.at(-1));
      if (last.every((t) => t?.target === puts)) {
        done = last.reduce((a, t) => a + t!.done, 0);
        minSeen = Math.min(...last.map((t) => t!.min));
      }
      if (done === n || performance.now() - lastWrite > DRAIN_DEADLINE * 1000) break;
      await sleep(50);
    }
    const c2 = sample(serverPid, procs);
    const drainWaited = (performance.now() - lastWrite) / 1000;
    const churnMessages = (await ingestedAt(workers, c1.atMs)) - (await ingestedAt(workers, c0.atMs));
    log(`drain: ${done} of ${n} followers have all ${puts} markers ${drainWaited.toFixed(2)} s after the last write (the slowest has ${minSeen})`);
    const streamLastSeq = await waitLastSeq(jsm, SEED + writes, 15);
    if (streamLastSeq !== SEED + writes) log(`the stream holds ${streamLastSeq < 0 ? 'an unknown number (the server did not answer)' : streamLastSeq - SEED} of the ${writes} churn writes by the end`);

    // 4. What every follower saw.
    const reports = await Promise.all(workers.map(async (wk) => {
      wk.send({ t: 'report' });
      return wk.next('report', 60_000);
    }));
    const hist = new Hist();
    const steady = new Hist();
    const toServer = new Hist();
    const fromServer = new Hist();
    const bySec = new Map<number, [Hist, Hist, Hist]>();
    const followers: FollowerReport[] = [];
    const agentBuckets = new Map<string, number>();
    let logLines = 0;
    for (const r of reports) {
      hist.merge(r.hist as HistWire);
      toServer.merge(r.toServer as HistWire);
      fromServer.merge(r.fromServer as HistWire);
      for (const [s, ...hw] of r.bySecond as [number, HistWire, HistWire, HistWire][]) {
        let h = bySec.get(s);
        if (!h) bySec.set(s, (h = [new Hist(), new Hist(), new Hist()]));
        hw.forEach((x, i) => h[i]!.merge(x));
        if (s >= STEADY_AFTER_S) steady.merge(hw[0]!);
      }
      followers.push(...(r.followers as FollowerReport[]));
      for (const b of r.agentHistogram as { le: string; count: number }[]) agentBuckets.set(b.le, (agentBuckets.get(b.le) ?? 0) + b.count);
      logLines += r.logLines as number;
    }
    const expectedSize = SEED + puts - dels;
    // Exact: the follower applied every write (the stream's last revision) and holds the region's size, in its table and its map.
    const followersExact = followers.filter((f) => f.size === expectedSize && f.mapSize === expectedSize && f.lastRevision === SEED + writes).length;
    const pairs = n * puts;
    const cpuC = split(c0, c1);
    const usPer = (pctOfCore: number, seconds: number, msgs: number): number => (msgs > 0 ? (pctOfCore * seconds * 1e4) / msgs : NaN);
    const allMarkers = followers.filter((f) => f.seen === puts).length;
    // Last write → the last marker applied anywhere (every follower had them all), else the time waited.
    const drainSeconds = allMarkers === n ? Math.max(0, (Math.max(...followers.map((f) => f.lastMarkerAtMs)) - lastWriteMono) / 1000) : (c2.atMs - lastWriteMono) / 1000;
    const run: FleetRun = {
      n,
      workers: w,
      loadAvg,
      seed: SEED,
      connectSeconds,
      settleSeconds,
      herd,
      churn: {
        targetRate: RATE,
        writes,
        puts,
        dels,
        seconds: churnSeconds,
        achievedRate: writes / churnSeconds,
        behindTicks: behind,
        cpu: cpuC,
        messages: Math.round(churnMessages),
        serverUsPerMessage: usPer(cpuC.serverPct, cpuC.seconds, churnMessages),
        followerUsPerMessage: usPer(cpuC.followersPct, cpuC.seconds, churnMessages),
        drainSeconds,
        drainCpu: split(c1, c2),
      },
      // Over every (follower, marker) pair: one never applied counts as infinitely late.
      latencyMs: { p50: hist.pct(50, pairs), p99: hist.pct(99, pairs), max: hist.n < pairs ? Infinity : hist.maxUs / 1000, count: hist.n },
      deliveredMaxMs: hist.maxUs / 1000,
      steadyMs: { p50: steady.pct(50), p99: steady.pct(99), max: steady.maxUs / 1000, count: steady.n },
      toServerMs: { p50: toServer.pct(50), p99: toServer.pct(99), max: toServer.maxUs / 1000, count: toServer.n },
      fromServerMs: { p50: fromServer.pct(50), p99: fromServer.pct(99), max: fromServer.maxUs / 1000, count: fromServer.n },
      bySecond: [...bySec.entries()]
        .sort((a, b) => a[0] - b[0])
        .map(([second, [h, to, from]]) => ({ second, p50: h.pct(50), p99: h.pct(99), max: h.maxUs / 1000, toServerP99: to.pct(99), fromServerP99: from.pct(99) })),
      agentHistogram: agentQuantiles(agentBuckets),
      markers: puts,
      followersAllMarkers: allMarkers,
      minMarkersSeen: Math.min(...followers.map((f) => f.seen)),
      followersExact,
      duplicateMarkers: followers.reduce((a, f) => a + f.dupes, 0),
      reconnects: followers.reduce((a, f) => a + f.reconnects, 0),
      logLines,
      keptUp: allMarkers === n && followersExact === n && drainSeconds < 1 && behind === 0,
      appliedPerFollower: followers.reduce((a, f) => a + f.upserts + f.deletes, 0) / n,
      streamLastSeq,
    };
    log(`fleet of ${n}: delivery p50 ${run.latencyMs.p50.toFixed(1)} ms, p99 ${run.latencyMs.p99.toFixed(1)} ms, max applied ${run.deliveredMaxMs.toFixed(0)} ms over ${run.latencyMs.count} of ${pairs} (follower, marker) pairs; churn CPU: nats-server ${run.churn.cpu.serverPct.toFixed(0)} %, followers ${run.churn.cpu.followersPct.toFixed(0)} %, writer ${run.churn.cpu.writerPct.toFixed(0)} %, other ${run.churn.cpu.otherPct.toFixed(0)} %; kept up: ${run.keptUp}`);
    log(`p99 by second of churn (ms): ${run.bySecond.map((x) => x.p99.toFixed(0)).join(' ')}`);
    log(`  of which writer → stored: ${run.bySecond.map((x) => x.toServerP99.toFixed(0)).join(' ')}; stored → applied: ${run.bySecond.map((x) => x.fromServerP99.toFixed(0)).join(' ')}`);
    return run;
  } finally {
    await Promise.all(workers.map(async (wk) => {
      if (wk.proc.exitCode !== null) return;
      wk.send({ t: 'stop' });
      await Promise.race([wk.next('stopped', 20_000).catch(() => undefined), sleep(20_000)]);
      if (wk.proc.exitCode === null) wk.proc.kill('SIGKILL');
    }));
    await nc.close();
    await nats.destroy();
  }
}

/** Wait until the processes together use under 10 % of a core over half a second, at most `seconds`; returns the seconds waited. */
async function waitIdle(procs: ChildProcess[], seconds: number): Promise<number> {
  const t0 = monoMs();
  const cpu = (): number => procs.reduce((a, p) => a + cpuOf(p.pid!), 0);
  for (;;) {
    const a = cpu();
    await sleep(500);
    if (cpu() - a < 0.05 || monoMs() - t0 > seconds * 1000) return (monoMs() - t0) / 1000;
  }
}

/** The stream's last sequence once it reaches `want`, or after `seconds` (the seed must all be there: throws if not). */
async function waitLastSeq(jsm: Awaited<ReturnType<typeof jetstreamManager>>, want: number, seconds?: number): Promise<number> {
  const t0 = monoMs();
  let last = -1;
  let stable = 0;
  for (;;) {
    let s: number;
    try {
      s = (await jsm.streams.info(`KV_${BUCKET}`)).state.last_seq;
    } catch (err) {
      // A server busy with a fleet answers API requests late.
      if (seconds === undefined) throw err;
      if (monoMs() - t0 > seconds * 1000) return last;
      continue;
    }
    if (s >= want) return s;
    if (seconds !== undefined && monoMs() - t0 > seconds * 1000) return s;
    stable = s === last ? stable + 1 : 0;
    if (seconds === undefined && stable >= 20) throw new Error(`the stream holds ${s} messages, expected ${want}`);
    last = s;
    await sleep(100);
  }
}

/** The bucket bounds under which the agent histogram's p50 and p99 fall (summed over all followers). */
function agentQuantiles(buckets: Map<string, number>): { p50: string; p99: string; count: number } {
  const bs = [...buckets.entries()].map(([le, count]) => ({ le: le === '+Inf' ? Infinity : Number(le), count })).sort((a, b) => a.le - b.le);
  const total = bs.at(-1)?.count ?? 0;
  const q = (p: number): string => {
    const hit = bs.find((b) => b.count >= p * total);
    return hit ? (hit.le === Infinity ? '> 10 s' : `≤ ${hit.le * 1000} ms`) : 'n/a';
  };
  return { p50: q(0.5), p99: q(0.99), count: total };
}

// ---------------------------------------------------------------- report

const pct = (x: number): string => `${x.toFixed(0)} %`;
const ms = (x: number): string => (Number.isNaN(x) ? 'n/a' : x === Infinity ? 'never (not applied in the run)' : x >= 100 ? `${x.toFixed(0)} ms` : `${x.toFixed(1)} ms`);
const us = (x: number): string => (Number.isFinite(x) ? `${x.toFixed(1)} µs` : 'n/a');

function report(runs: FleetRun[], seconds: number): void {
  const col = (f: (r: FleetRun) => string): string[] => runs.map(f);
  const split3 = (c: CpuSplit): string => `${pct(c.serverPct)} / ${pct(c.followersPct)} / ${pct(c.writerPct)} / ${pct(c.otherPct)} (machine ${pct(c.machineBusyPct)}${c.stealPct >= 1 ? `, steal ${pct(c.stealPct)}` : ''})`;
  const fleet: Table = {
    title: `Fleet: one region's followers on one nats-server, churn at ${RATE.toLocaleString('en')} updates/s`,
    note:
      `Each follower is the agent's MembershipFollower + MembershipSync (reader, decoder, batches) on an AgentStore connection of its own (one client and one pull consumer each on the server, as with real agents), with an in-memory endpoints map; ` +
      `${WORKERS} worker processes share the followers, the bench process writes, all on one 2-core machine. Region of ${SEED.toLocaleString('en')} endpoints in ${BUCKET} (history ${ENDPOINTS_HISTORY}); all followers start at once and read it whole; then ${CHURN_SECONDS} s of churn, half new endpoints (each a marker, timed from the writer's clock to the follower's map write), half deletes. ` +
      `CPU in % of one core (200 % is the whole machine): nats-server / followers / writer / other (the machine's busy time outside these processes: other work on it). A marker not applied by the end counts as infinitely late. ` +
      `"On paper": the CPU per message measured here, times the fleet and the rate.`,
    columns: ['figure', ...col((r) => `${r.n.toLocaleString('en')} followers`)],
    rows: [
      ['load average at the start (1/5/15 min)', ...col((r) => r.loadAvg.join(' / '))],
      ['connections made (one per follower)', ...col((r) => `${r.connectSeconds.toFixed(1)} s`)],
      [
        'all start at once → each has read the region whole: first / median / last',
        ...col((r) => (r.herd.done === r.n ? `${r.herd.firstSeconds.toFixed(2)} / ${r.herd.p50Seconds.toFixed(2)} / ${r.herd.lastSeconds.toFixed(2)} s` : `${r.herd.done} of ${r.n} within ${HERD_DEADLINE} s (first ${r.herd.firstSeconds.toFixed(2)} s)`)),
      ],
      [
        'initial read: messages read by the followers (rate; at that rate all of them take)',
        ...col((r) => `${r.herd.messages.toLocaleString('en')} of ${(r.n * r.seed).toLocaleString('en')} (${Math.round(r.herd.messages / r.herd.cpu.seconds).toLocaleString('en')}/s; ${((r.n * r.seed) / (r.herd.messages / r.herd.cpu.seconds)).toFixed(0)} s)`),
      ],
      ['initial read: CPU, nats-server / followers / writer / other', ...col((r) => split3(r.herd.cpu))],
      ['initial read: CPU per message read, nats-server / follower', ...col((r) => `${us(r.herd.serverUsPerMessage)} / ${us(r.herd.followerUsPerMessage)}`)],
      [
        'writes (achieved rate; in the stream at the end)',
        ...col((r) => `${r.churn.writes} (${r.churn.achievedRate.toFixed(0)}/s${r.churn.behindTicks ? `, writer behind in ${r.churn.behindTicks} ticks` : ''}; ${r.streamLastSeq - r.seed === r.churn.writes ? 'all' : r.streamLastSeq < 0 ? 'the server did not say' : r.streamLastSeq - r.seed})`),
      ],
      ['KV write → applied in a follower: p50', ...col((r) => ms(r.latencyMs.p50))],
      [`KV write → applied in a follower: p99 (goal ≤ ${GOAL_P99_MS} ms at ${GOAL_N})`, ...col((r) => ms(r.latencyMs.p99))],
      ['KV write → applied in a follower: max of those applied', ...col((r) => ms(r.deliveredMaxMs))],
      [`after the first ${STEADY_AFTER_S} s of churn (pairs applied): p50 / p99`, ...col((r) => `${ms(r.steadyMs.p50)} / ${ms(r.steadyMs.p99)}`)],
      ['(follower, marker) pairs applied by the end', ...col((r) => `${r.latencyMs.count.toLocaleString('en')} of ${(r.markers * r.n).toLocaleString('en')}`)],
      ['  first leg, write → stored (server timestamp): p50 / p99', ...col((r) => `${ms(r.toServerMs.p50)} / ${ms(r.toServerMs.p99)}`)],
      ['  second leg, stored → applied in a follower: p50 / p99', ...col((r) => `${ms(r.fromServerMs.p50)} / ${ms(r.fromServerMs.p99)}`)],
      [`seconds of churn whose p99 was over ${GOAL_P99_MS} ms (applied markers)`, ...col((r) => `${r.bySecond.filter((x) => x.p99 > GOAL_P99_MS).length} of ${r.bySecond.length}`)],
      ['agent histogram (server time → map write), p50 / p99', ...col((r) => `${r.agentHistogram.p50} / ${r.agentHistogram.p99}`)],
      ['churn: CPU, nats-server / followers / writer / other', ...col((r) => split3(r.churn.cpu))],
      ['churn: messages read by the followers', ...col((r) => `${r.churn.messages.toLocaleString('en')} (${Math.round(r.churn.messages / r.churn.cpu.seconds).toLocaleString('en')}/s of ${(r.n * RATE).toLocaleString('en')}/s sent)`)],
      ['churn: CPU per message read, nats-server / follower', ...col((r) => `${us(r.churn.serverUsPerMessage)} / ${us(r.churn.followerUsPerMessage)}`)],
      [
        `on paper: ${GOAL_N.toLocaleString('en')} followers at ${RATE.toLocaleString('en')}/s need, of nats-server / of each agent`,
        ...col((r) => `${((r.churn.serverUsPerMessage * GOAL_N * RATE) / 1e6).toFixed(1)} cores / ${((r.churn.followerUsPerMessage * RATE) / 1e4).toFixed(1)} % of a core`),
      ],
      ['followers with every marker / with the exact region at the end', ...col((r) => `${r.followersAllMarkers} / ${r.followersExact} of ${r.n}`)],
      ['last write → every follower has every marker', ...col((r) => (r.followersAllMarkers === r.n ? `${(r.churn.drainSeconds * 1000).toFixed(0)} ms` : `not within ${DRAIN_DEADLINE} s (the slowest had ${r.minMarkersSeen} of ${r.markers})`))],
      ['reconnects / warnings logged by the followers', ...col((r) => `${r.reconnects} / ${r.logLines}`)],
      ['kept up', ...col((r) => (r.keptUp ? 'yes' : 'no'))],
    ],
  };
  const big = runs.find((r) => r.n === GOAL_N);
  const small = runs.find((r) => r.n < GOAL_N);
  let measured = 'not run';
  if (big) {
    const c = big.churn.cpu;
    const p99 = (r: FleetRun): string =>
      r.latencyMs.p99 === Infinity
        ? `no p99: ${r.latencyMs.count.toLocaleString('en')} of ${(r.markers * r.n).toLocaleString('en')} (follower, marker) pairs applied by the end`
        : `p99 ${ms(r.latencyMs.p99)} (p50 ${ms(r.latencyMs.p50)})`;
    measured =
      `${p99(big)}; kept up: ${big.keptUp ? 'yes' : 'no'}; ` +
      `churn CPU (200 % = the machine): nats-server ${pct(c.serverPct)}, followers ${pct(c.followersPct)}, writer ${pct(c.writerPct)}, other work ${pct(c.otherPct)}; ` +
      `on paper nats-server needs ${((big.churn.serverUsPerMessage * GOAL_N * RATE) / 1e6).toFixed(1)} cores for it`;
    if (small) measured += `; ${small.n} followers: ${p99(small)}, kept up: ${small.keptUp ? 'yes' : 'no'}`;
  }
  const goals: Goal[] = [
    {
      goal: `issue 11: simulated fleet, ${GOAL_N} followers, ${RATE / 1000} thousand updates/s: delivery p99 ≤ ${GOAL_P99_MS} ms`,
      measured,
      met: big !== undefined && big.latencyMs.p99 <= GOAL_P99_MS && big.keptUp,
    },
  ];
  printTable(fleet);
  for (const g of goals) console.log(`goal: ${g.goal}: ${g.measured} — ${g.met ? 'met' : 'NOT met'}`);
  const file = saveSection('fleet', { at: new Date().toISOString(), seconds, tables: [fleet], goals, data: { runs, natsServer: sh(['nats-server', '--version'], { allowFail: true }).trim() } });
  log(`wrote ${file}`);
}

async function main(): Promise<void> {
  const t0 = process.hrtime.bigint();
  const runs: FleetRun[] = [];
  for (const n of SIZES) runs.push(await runFleet(n));
  report(runs, secondsSince(t0));
  cleanup();
  process.exit(0);
}

(process.env.I6PN_BENCH_FLEET_WORKER ? worker() : main()).catch((err: unknown) => {
  console.error(err);
  cleanup();
  process.exit(1);
});
