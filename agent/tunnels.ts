/**
 * Following a region's tunnels bucket (`i6pn_tunnels_<region>`), for the
 * agent (which keeps the dataplane's tunnels map equal to it) and the gateway
 * (which listens for each tunnel).
 *
 * A region has few tunnels (one per exposed port, not one per container), so
 * this reads them the simple way, unlike the endpoints (agent/reader.ts): a
 * KV watch (nats.js) from the stream's first message, in order. Every entry
 * is validated (lib/schema.ts validateTunnelEntry); an invalid one is
 * reported and not applied, and removes what its key held (fail closed).
 *
 * Each read builds the whole set afresh and hands it over once it has
 * reached the stream's head as it was when the read began; after that,
 * every change hands over the new set. A failed or stopped read (a lost
 * connection, `resume()`, the periodic resync) starts a new one; meanwhile
 * the last set stays: the agent's map and the gateway's listeners are
 * frozen, never opened nor closed, while the store is away. Consumers compare
 * the set with what they hold (the reconcile shape of agent/attach.ts), so a
 * resync that finds nothing new changes nothing.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { KV, KvEntry } from '@nats-io/kv';
import { validateTunnelEntry, type InvalidReason, type TunnelRecord } from '../lib/schema.js';
import * as abi from './bpf/abi.generated.js';
import { IP_PROTOCOL } from '../lib/schema.js';
import type { TunnelEntry } from './bpf/dataplane.js';
import type { Logger } from './log.js';

/** A valid tunnel of the region, as read. */
export interface Tunnel {
  /** Its key in the region's bucket. */
  key: string;
  record: TunnelRecord;
  /** The endpoint's address. */
  addr: Uint8Array;
}

export interface TunnelFollowerOptions {
  /** The region's tunnels bucket (fails while it does not exist: the follower retries). */
  openBucket: () => Promise<KV>;
  region: string;
  regionId: number;
  log: Logger;
  /** The region's tunnels, whole, after the first read and after every change. */
  onTunnels: (tunnels: ReadonlyMap<string, Tunnel>) => void;
  /** An entry that breaks the schema (once per key and revision). */
  onRejected?: (reason: InvalidReason) => void;
  /** Read the bucket whole again this often (default 60 s): a mark and sweep. */
  resyncMs?: number;
}

/** The longest wait between two attempts to read the bucket. */
const MAX_BACKOFF_MS = 2000;

export class TunnelFollower {
  private readonly o: TunnelFollowerOptions;
  private current = new Map<string, Tunnel>();
  private readonly rejected = new Map<string, number>();
  private stopped = false;
  private watch: { stop(): void } | null = null;
  private loop: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  private synced = false;

  constructor(o: TunnelFollowerOptions) {
    this.o = o;
  }

  /** Whether a read has reached the head once (the set handed over is the store's). */
  get initialSyncDone(): boolean {
    return this.synced;
  }

  start(): void {
    this.loop = this.run();
    this.timer = setInterval(() => this.resume(), this.o.resyncMs ?? 60_000);
    this.timer.unref();
  }

  /** Read the bucket again now (a reconnect, the resync). */
  resume(): void {
    this.watch?.stop();
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.resume();
    await this.loop;
  }

  private async run(): Promise<void> {
    let failures = 0;
    while (!this.stopped) {
      try {
        await this.readOnce();
        failures = 0;
      } catch (err) {
        if (this.stopped) break;
        failures++;
        this.o.log.warn({ err: { message: (err as Error).message }, attempt: failures }, 'reading the tunnels bucket failed; retrying (the last tunnels stay as they are)');
      }
      if (this.stopped) break;
      await Promise.race([sleep(Math.min(MAX_BACKOFF_MS, 100 * 2 ** failures)), new Promise<void>((r) => (this.wake = r))]);
      this.wake = null;
    }
  }

  /** One read: the whole bucket in order, then its updates until it stops. */
  private async readOnce(): Promise<void> {
    const kv = await this.o.openBucket();
    const head = (await kv.status()).streamInfo.state.last_seq;
    const next = new Map<string, Tunnel>();
    let initial = head > 0;
    if (!initial) this.handOver(next);
    const w = await kv.watch({ resumeFromRevision: 1 });
    this.watch = w;
    if (this.stopped) w.stop();
    for await (const e of w) {
      this.apply(initial ? next : this.current, e);
      if (initial && e.revision >= head) {
        initial = false;
        this.handOver(next);
      } else if (!initial) {
        this.o.onTunnels(this.current);
      }
    }
  }

  private handOver(tunnels: Map<string, Tunnel>): void {
    this.current = tunnels;
    if (!this.synced) this.o.log.info({ tunnels: tunnels.size }, 'read the tunnels of the region');
    this.synced = true;
    this.o.onTunnels(tunnels);
  }

  private apply(into: Map<string, Tunnel>, e: KvEntry): void {
    if (e.operation !== 'PUT') {
      into.delete(e.key);
      return;
    }
    const v = validateTunnelEntry(this.o.region, this.o.regionId, e.key, e.value);
    if (v.ok) {
      into.set(e.key, { key: e.key, record: v.record, addr: v.addr });
      return;
    }
    into.delete(e.key);
    if (this.rejected.get(e.key) === e.revision) return;
    this.rejected.set(e.key, e.revision);
    this.o.onRejected?.(v.reason);
    this.o.log.warn({ key: e.key, revision: e.revision, reason: v.reason, problem: v.message }, 'invalid tunnel entry rejected');
  }
}

/** What the agent needs of the dataplane's tunnels map (Dataplane fits). */
export interface TunnelMap {
  listTunnels(): TunnelEntry[];
  setTunnel(t: TunnelEntry): void;
  deleteTunnel(t: Omit<TunnelEntry, 'id'>): boolean;
}

const entryKey = (t: Omit<TunnelEntry, 'id'>): string => `${Buffer.from(t.addr).toString('hex')}/${t.proto}/${t.port}`;

/** The map entry of a tunnel: (endpoint address, IP protocol, port) → its id. */
export function tunnelEntry(t: Tunnel): TunnelEntry {
  return { addr: t.addr, proto: IP_PROTOCOL[t.record.proto], port: t.record.port, id: parseInt(t.record.id, 16) };
}

/**
 * Make the tunnels map hold exactly `tunnels`: what it lacks (or holds with
 * another id) is written, what no tunnel names is deleted. Returns the
 * entries it holds after, and how many writes failed (a full map: that
 * tunnel's port stays closed to the gateways, nothing is evicted).
 */
export function reconcileTunnelMap(map: TunnelMap, tunnels: ReadonlyMap<string, Tunnel>, log: Logger): { entries: number; failed: number } {
  const wanted = new Map([...tunnels.values()].map((t) => tunnelEntry(t)).map((e) => [entryKey(e), e]));
  const held = new Map(map.listTunnels().map((e) => [entryKey(e), e]));
  let failed = 0;
  for (const [k, e] of held) {
    if (!wanted.has(k)) {
      map.deleteTunnel(e);
      held.delete(k);
    }
  }
  for (const [k, e] of wanted) {
    if (held.get(k)?.id === e.id) continue;
    try {
      map.setTunnel(e);
      held.set(k, e);
    } catch (err) {
      failed++;
      log.error({ err, port: e.port, id: e.id.toString(16) }, 'writing a tunnel into the map failed (is it full?); the gateways cannot reach its port');
    }
  }
  return { entries: held.size, failed };
}

/** Capacity of the tunnels map (bpf/maps.h). */
export const TUNNELS_MAP_CAPACITY = abi.maps.tunnels.maxEntries;
