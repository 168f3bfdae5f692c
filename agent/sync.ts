/**
 * Membership into the endpoints map: the region's endpoint entries, read in
 * stream order from the store, validated, coalesced into batches and written
 * with bpf_map_update_batch / delete_batch.
 *
 * State kept per endpoint is small (key → applied revision): the map itself
 * holds the values. Local endpoints (node = this node) also keep what the
 * attach life cycle needs (address, veth name, i6pn).
 *
 * Snapshots: at start and at every reconcile the reader delivers the last
 * value of every key, then follows updates, in one ordered stream. When the
 * snapshot has been applied, every map entry whose key was not in it is swept
 * (mark and sweep): a delete that was missed, or an entry left by an earlier
 * run, cannot linger. Because the snapshot and the updates are one stream, the
 * sweep never races an update. Nothing is cleared on start: the pinned map
 * keeps enforcing the last state until the snapshot replaces it.
 *
 * An invalid entry is never applied; if its key held a valid endpoint before,
 * that endpoint is removed (the store no longer vouches for it: fail closed).
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { formatAddress, regionIdHex, regionOf, workspaceIdHex } from '../lib/address.js';
import { parseEndpointKey, type EndpointRecord, type InvalidReason } from '../lib/schema.js';
import { EndpointTable, type EndpointId } from './table.js';
import { validateEndpoint } from './validate.js';
import type { Endpoint, UpsertResult } from './bpf/dataplane.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';

/** One message of the endpoints bucket, in stream order. */
export interface StoreEntry {
  /** The KV key, `<region>.<workspace id>.<endpoint id>`. */
  key: string;
  value: Uint8Array;
  /** The KV revision (stream sequence). */
  revision: number;
  operation: 'PUT' | 'DEL' | 'PURGE';
  /** Server timestamp of the write. */
  created: Date;
}

/** What the sync needs of the dataplane (Dataplane fits). */
export interface EndpointMap {
  upsertEndpoints(entries: readonly Endpoint[]): UpsertResult;
  deleteEndpoints(addrs: readonly Uint8Array[]): number;
}

/** A local endpoint, as the attach life cycle needs it. */
export interface LocalEndpoint {
  key: string;
  addr: Uint8Array;
  /** Canonical text of addr. */
  address: string;
  ifname: string;
  i6pn: boolean;
  workspace: number;
  region: number;
  /** ifindex written in the endpoint's map value (0: none). */
  writtenIfindex: number;
}

export interface SyncOptions {
  map: EndpointMap;
  /** Every address in the endpoints map, a chunk at a time (the sweep's view of the kernel). */
  listAddresses: () => Iterable<Uint8Array[]>;
  node: string;
  region: string;
  regionId: number;
  /** The ifindex of a host-side veth, if it exists now. */
  ifindexOf: (ifname: string) => number | undefined;
  /** Called after a batch changed the set of local endpoints. */
  onLocalsChanged: () => void;
  metrics: AgentMetrics;
  log: Logger;
  /** Entries per batch (default 2048). */
  batchSize?: number;
}

type Op =
  | { kind: 'put'; key: string; addr: Uint8Array; record: EndpointRecord; revision: number; created: Date; live: boolean }
  | { kind: 'del'; key: string; addr: Uint8Array | null; revision: number; created: Date };

const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');

/** The endpoint a map address names (its region is the agent's). */
function idOfAddress(a: Uint8Array): EndpointId {
  const v = new DataView(a.buffer, a.byteOffset, 16);
  return { workspace: v.getUint32(2), hi: v.getUint32(8), lo: v.getUint32(12) };
}

/** The endpoint a key names, or null when it is not an endpoint key. */
function idOfKey(key: string): EndpointId | null {
  const k = parseEndpointKey(key);
  if (!k) return null;
  return { workspace: k.workspaceId, hi: parseInt(k.endpointId.slice(0, 8), 16), lo: parseInt(k.endpointId.slice(8), 16) };
}

/** FNV-1a, 32 bits, of the UTF-8 bytes: a node's id in map values and the config map. */
export function nodeId(name: string): number {
  let h = 0x811c9dc5;
  for (const b of Buffer.from(name, 'utf8')) {
    h ^= b;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** A map update refused for want of room (the error code libbpf returns). */
export function isMapFull(code: string): boolean {
  return code === 'E2BIG' || code === 'ENOSPC' || code === 'ENOMEM';
}

export class MembershipSync {
  /** endpoint → revision applied to the map, with the snapshot's marks. */
  private readonly known = new EndpointTable();
  /** key → revision of an invalid entry, so a reconcile re-reading it does not count it again. */
  private readonly rejected = new Map<string, number>();
  private readonly locals = new Map<string, LocalEndpoint>();
  private pending = new Map<string, Op>();
  private snapshot = false;
  /** The next snapshot re-applies every entry, even one whose revision was applied already. */
  private forceFull = false;
  private lastRevision_ = 0;
  private readonly batchSize: number;
  private readonly o: SyncOptions;
  private readonly nodeIds = new Map<string, number>();

  constructor(o: SyncOptions) {
    this.o = o;
    this.batchSize = o.batchSize ?? 2048;
  }

  /** Revision of the last entry processed (applied or rejected). */
  get lastRevision(): number {
    return this.lastRevision_;
  }

  /** The local endpoints by key. */
  localEndpoints(): ReadonlyMap<string, LocalEndpoint> {
    return this.locals;
  }

  /** Endpoints currently in the map by this agent's account. */
  get size(): number {
    return this.known.size;
  }

  /** A snapshot starts: from here until endSnapshot(), every valid key is marked. */
  beginSnapshot(): void {
    this.known.newEpoch();
    this.snapshot = true;
  }

  get inSnapshot(): boolean {
    return this.snapshot;
  }

  /**
   * Take one entry (stream order). Batches are written when full; the caller
   * flushes when its input pauses. Returns true when a batch was written (the
   * caller should then yield to the event loop).
   */
  ingest(e: StoreEntry): boolean {
    const op = this.classify(e);
    if (op) {
      // Coalesce: only the last operation of a key in a batch matters.
      this.pending.delete(op.key);
      this.pending.set(op.key, op);
    }
    if (e.revision > this.lastRevision_) this.lastRevision_ = e.revision;
    if (this.pending.size >= this.batchSize) {
      this.flush();
      return true;
    }
    return false;
  }

  private classify(e: StoreEntry): Op | null {
    if (e.operation !== 'PUT') {
      this.rejected.delete(e.key);
      return { kind: 'del', key: e.key, addr: this.addressOfKey(e.key), revision: e.revision, created: e.created };
    }
    if (this.snapshot && !this.forceFull) {
      const id = idOfKey(e.key);
      if (id && this.known.get(id) === e.revision) {
        // Applied already (a reconcile re-reading an unchanged entry): only mark it.
        this.known.mark(id);
        return null;
      }
    }
    const v = validateEndpoint(e.key, e.value);
    let reason: InvalidReason | null = null;
    let message = '';
    if (!v.ok) {
      reason = v.reason;
      message = v.message;
    } else if (v.record.region !== this.o.region || v.record.regionId !== this.o.regionId) {
      reason = 'address';
      message = `endpoint of region ${v.record.region} (id ${regionIdHex(v.record.regionId)}) in the watch of region ${this.o.region} (id ${regionIdHex(this.o.regionId)})`;
    }
    if (reason !== null || !v.ok) {
      if (this.rejected.get(e.key) !== e.revision) {
        this.rejected.set(e.key, e.revision);
        this.o.metrics.membershipUpdates.inc({ result: 'rejected' });
        this.o.metrics.membershipRejected.inc({ reason: reason! });
        this.o.log.warn({ key: e.key, revision: e.revision, reason, problem: message }, 'invalid endpoint entry rejected');
      }
      // Not applied; a valid endpoint the key held before goes (fail closed).
      return { kind: 'del', key: e.key, addr: this.addressOfKey(e.key), revision: e.revision, created: e.created };
    }
    this.rejected.delete(e.key);
    // Apply latency is measured on updates; a snapshot re-reads entries written long ago.
    return { kind: 'put', key: e.key, addr: v.addr, record: v.record, revision: e.revision, created: e.created, live: !this.snapshot };
  }

  /** The address a key names in this region, or null when the key is not an endpoint key of it. */
  private addressOfKey(key: string): Uint8Array | null {
    const k = parseEndpointKey(key);
    if (!k || k.region !== this.o.region) return null;
    const a = Buffer.alloc(16);
    a.writeUInt16BE(0xfdaa, 0);
    a.writeUInt32BE(k.workspaceId, 2);
    a.writeUInt16BE(this.o.regionId, 6);
    Buffer.from(k.endpointId, 'hex').copy(a, 8);
    return new Uint8Array(a);
  }

  /** The key of an endpoint of this region. */
  private keyOfId(id: EndpointId): string {
    return `${this.o.region}.${workspaceIdHex(id.workspace)}.${hex8(id.hi)}${hex8(id.lo)}`;
  }

  private nodeIdOf(name: string): number {
    let id = this.nodeIds.get(name);
    if (id === undefined) {
      id = nodeId(name);
      if (this.nodeIds.size < 100_000) this.nodeIds.set(name, id);
    }
    return id;
  }

  private endpointValue(addr: Uint8Array, r: EndpointRecord, ifindex: number): Endpoint {
    const local = r.node === this.o.node;
    return {
      addr,
      workspace: r.workspaceId,
      region: r.regionId,
      node: this.nodeIdOf(r.node),
      flags: { i6pn: r.i6pn, local },
      ifindex: local ? ifindex : 0,
    };
  }

  /** Write the batch taken so far. */
  flush(): void {
    if (this.pending.size === 0) return;
    const ops = [...this.pending.values()];
    this.pending = new Map();
    const m = this.o.metrics;
    let localsChanged = false;

    const dels = ops.filter((o): o is Extract<Op, { kind: 'del' }> => o.kind === 'del');
    if (dels.length) {
      const addrs = dels.map((d) => d.addr).filter((a): a is Uint8Array => a !== null);
      try {
        this.o.map.deleteEndpoints(addrs);
        for (const d of dels) {
          const id = idOfKey(d.key);
          if (id) this.known.delete(id);
          if (this.locals.delete(d.key)) localsChanged = true;
        }
      } catch (err) {
        // Left in the map; the next reconcile sweeps them.
        this.forceFull = true;
        this.o.log.error({ err, count: addrs.length }, 'removing endpoints from the map failed');
      }
    }

    const puts = ops.filter((o): o is Extract<Op, { kind: 'put' }> => o.kind === 'put');
    if (puts.length) {
      const values = puts.map((p) => {
        const local = p.record.node === this.o.node;
        return this.endpointValue(p.addr, p.record, local ? (this.o.ifindexOf(p.record.ifname) ?? 0) : 0);
      });
      let result: UpsertResult;
      try {
        result = this.o.map.upsertEndpoints(values);
      } catch (err) {
        result = { applied: 0, failed: puts.map((p, index) => ({ index, addr: p.addr, error: err as never })) };
      }
      const failed = new Map(result.failed.map((f) => [f.index, f]));
      const now = Date.now();
      let full = 0;
      for (let i = 0; i < puts.length; i++) {
        const p = puts[i]!;
        const f = failed.get(i);
        if (f) {
          m.membershipUpdates.inc({ result: 'failed' });
          const code = (f.error as { code?: string } | undefined)?.code ?? '';
          if (isMapFull(code)) {
            full++;
            m.mapFull.inc();
          } else {
            this.o.log.error({ key: p.key, address: p.record.address, err: f.error }, 'writing an endpoint into the map failed');
          }
          // Not in the map: unreachable, and retried by the next reconcile.
          this.known.delete(idOfAddress(p.addr));
          if (this.locals.delete(p.key)) localsChanged = true;
          continue;
        }
        m.membershipUpdates.inc({ result: 'applied' });
        if (p.live) m.applyLatency.observe(Math.max(0, (now - p.created.getTime()) / 1000));
        this.known.set(idOfAddress(p.addr), p.revision, this.snapshot);
        if (p.record.node === this.o.node) {
          const prev = this.locals.get(p.key);
          const next: LocalEndpoint = {
            key: p.key,
            addr: p.addr,
            address: p.record.address,
            ifname: p.record.ifname,
            i6pn: p.record.i6pn,
            workspace: p.record.workspaceId,
            region: p.record.regionId,
            writtenIfindex: values[i]!.ifindex,
          };
          this.locals.set(p.key, next);
          if (!prev || prev.ifname !== next.ifname || prev.i6pn !== next.i6pn || prev.address !== next.address) localsChanged = true;
        } else if (this.locals.delete(p.key)) {
          localsChanged = true;
        }
      }
      if (full) {
        this.o.log.error(
          { refused: full, capacity: 'see i6pn_map_capacity{map="endpoints"}' },
          'endpoints map is full: new endpoints stay unreachable (nothing was evicted); raise --max-endpoints (takes a teardown) or remove endpoints',
        );
      }
    }
    this.updateGauges();
    if (localsChanged) this.o.onLocalsChanged();
  }

  private updateGauges(): void {
    const m = this.o.metrics;
    m.lastRevision.set(this.lastRevision_);
    m.endpoints.set({ scope: 'region' }, this.known.size);
    m.endpoints.set({ scope: 'local' }, this.locals.size);
    m.mapEntries.set({ map: 'endpoints' }, this.known.size);
  }

  /**
   * Rewrite a local endpoint's map value with the veth's current ifindex (the
   * interface appeared, went or changed after the entry was written).
   */
  rewriteLocal(key: string, ifindex: number): void {
    const l = this.locals.get(key);
    if (!l || l.writtenIfindex === ifindex) return;
    const value: Endpoint = {
      addr: l.addr,
      workspace: l.workspace,
      region: l.region,
      node: this.nodeIdOf(this.o.node),
      flags: { i6pn: l.i6pn, local: true },
      ifindex,
    };
    const r = this.o.map.upsertEndpoints([value]);
    if (r.failed.length === 0) l.writtenIfindex = ifindex;
    else this.o.log.warn({ key, ifindex, err: r.failed[0]!.error }, 'updating a local endpoint\'s ifindex failed');
  }

  /**
   * The snapshot is complete: flush, then sweep every map entry whose key it
   * did not hold. Yields to the event loop between chunks. Returns how many
   * entries were removed.
   */
  async endSnapshot(): Promise<number> {
    this.flush();
    if (!this.snapshot) return 0;
    this.snapshot = false;
    const stale: Uint8Array[] = [];
    let inKernel = 0;
    for (const chunk of this.o.listAddresses()) {
      for (const addr of chunk) {
        inKernel++;
        if (regionOf(addr) !== this.o.regionId || !this.known.isMarked(idOfAddress(addr))) stale.push(addr);
      }
      await yieldToLoop();
    }
    let removed = 0;
    if (stale.length) {
      removed = this.o.map.deleteEndpoints(stale);
      this.o.log.info(
        { removed, sample: stale.slice(0, 5).map((a) => formatAddress(a)) },
        'swept map entries that the store no longer holds',
      );
    }
    let localsChanged = false;
    this.known.sweepUnmarked((id) => {
      if (this.locals.delete(this.keyOfId(id))) localsChanged = true;
    });
    const after = inKernel - removed;
    this.forceFull = after !== this.known.size;
    if (this.forceFull) {
      this.o.log.warn(
        { inMap: after, applied: this.known.size },
        'the endpoints map and the applied state disagree; the next reconcile re-applies every entry',
      );
    }
    this.updateGauges();
    this.o.metrics.mapEntries.set({ map: 'endpoints' }, after);
    if (localsChanged) this.o.onLocalsChanged();
    return removed;
  }

  /** A snapshot was abandoned (the reader failed): forget the marks, sweep nothing. */
  abortSnapshot(): void {
    this.flush();
    this.snapshot = false;
  }
}
