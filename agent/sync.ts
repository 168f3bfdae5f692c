/**
 * Membership into the endpoints map: the messages of the region's endpoints
 * bucket (`i6pn_endpoints_<region>`, one message per key), in stream order,
 * decoded, coalesced into batches and written with bpf_map_update_batch /
 * delete_batch.
 *
 * The hot path allocates nothing per entry beyond what JSON.parse makes: the
 * key is parsed from its characters, the record is checked by agent/decode.ts,
 * the address and the map value are written straight into preallocated batch
 * buffers, and what was applied is kept in EndpointTable's typed arrays
 * (endpoint → applied revision) outside the JavaScript heap. Local endpoints
 * (node = this node) also keep what the attach life cycle needs.
 *
 * Three ways of reading, all into the same batches:
 *
 * - A full read (the first start, or when the pinned position is unusable):
 *   the live reader starts at the stream's first message with every entry
 *   marked; when it has caught up, every map entry it did not mark is swept
 *   (mark and sweep). Nothing is cleared first: the pinned map keeps enforcing
 *   its last state until the read replaces it.
 * - A resume: the maps already reflect revision R (the sync_state map says so,
 *   for this stream), so the live reader starts at R + 1. The local endpoints
 *   are taken from the veths the attacher adopted until a reconcile has read
 *   the region.
 * - A reconcile, in the background: a second reader goes through the stream
 *   while the live reader goes on. An entry the live reader has touched since
 *   the reconcile began is the live reader's; any other entry whose revision
 *   the map does not hold is applied; at the end, map entries that neither
 *   marked are swept. Updates never wait behind it.
 *
 * After each batch the position is written to the pinned sync_state map, so
 * that a restarted agent resumes from there (only once a full read has been
 * swept, or when it resumed itself: a half-read region is no position).
 *
 * An invalid entry is never applied; if its key held a valid endpoint before,
 * that endpoint is removed (the store no longer vouches for it: fail closed).
 *
 * The resolver's names index (agent/names.ts), when there is one, changes in
 * the same flush as the maps, right after each map write succeeds: an entry
 * is answerable exactly while it is in the map.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { endpointHalfAt, formatAddress, regionAt, regionIdHex, workspaceAt, writeEndpointAddress } from '../lib/address.js';
import { validateEndpointEntry, type EndpointRecord, type InvalidReason } from '../lib/schema.js';
import * as abi from './bpf/abi.generated.js';
import { ENDPOINT_VALUE_SIZE, writeEndpointValue, type SyncState, type UpsertResult } from './bpf/dataplane.js';
import {
  DecodeContext,
  addressOf,
  clusterOf,
  decodeEndpoint,
  flagsOf,
  fromRecord,
  hasNames,
  ifnameOf,
  nameOf,
  newDecoded,
  parseBucketKey,
  rankOf,
  type Decoded,
  type KeyParts,
} from './decode.js';
import type { NameFields, NamesIndex } from './names.js';
import { EndpointTable, type EndpointId } from './table.js';
import type { Logger } from './log.js';
import type { AgentMetrics } from './metrics.js';

/** What a KV message says of its key. */
export const Operation = { PUT: 0, DEL: 1, PURGE: 2 } as const;
export type Operation = (typeof Operation)[keyof typeof Operation];

/** What the sync needs of the dataplane (Dataplane fits). */
export interface EndpointMap {
  upsertEndpointBatch(keys: Buffer, values: Buffer, count: number): UpsertResult;
  deleteEndpointBatch(keys: Buffer, count: number): number;
  /** Every address in the endpoints map, a chunk at a time (the sweep's view of the kernel). */
  endpointAddresses(): Iterable<Uint8Array[]>;
  endpointsEmpty(): boolean;
  writeSyncState(st: SyncState): void;
}

/** A local endpoint, as the attach life cycle needs it. */
export interface LocalEndpoint {
  /** `<region>.<workspace id>.<endpoint id>` (lib/schema.ts endpointKey). */
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
  node: string;
  region: string;
  regionId: number;
  /** The ifindex of a bound host-side veth, if there is one now. */
  ifindexOf: (ifname: string) => number | undefined;
  /** Called after a batch changed the set of local endpoints. */
  onLocalsChanged: () => void;
  metrics: AgentMetrics;
  log: Logger;
  /** Entries per batch (default 2048). */
  batchSize?: number;
  /** The resolver's names index, kept in the same batches (none: no resolver). */
  names?: NamesIndex;
  /**
   * Entries were refused for want of room and a delete has since freed some:
   * read the region again (a reconcile) so they get in now, not at the next
   * periodic reconcile.
   */
  onRoom?: () => void;
}

const hex8 = (n: number): string => (n >>> 0).toString(16).padStart(8, '0');

export { nodeId } from './decode.js';

/** FNV-1a, 64 bits: a stream's identity in the sync_state map (its name and creation time). */
export function streamId(name: string, created: string): bigint {
  let h = 0xcbf29ce484222325n;
  for (const b of Buffer.from(`${name}\0${created}`, 'utf8')) {
    h ^= BigInt(b);
    h = BigInt.asUintN(64, h * 0x100000001b3n);
  }
  return h;
}

/** A map update refused for want of room (the error code libbpf returns). */
export function isMapFull(code: string): boolean {
  return code === 'E2BIG' || code === 'ENOSPC' || code === 'ENOMEM';
}

export class MembershipSync {
  /** endpoint → revision applied to the map, with the marks of the read or reconcile under way. */
  private known = new EndpointTable();
  /** key → revision of an invalid entry, so a reconcile re-reading it does not count it again. */
  private readonly rejected = new Map<string, number>();
  private readonly locals = new Map<string, LocalEndpoint>();
  private readonly o: SyncOptions;
  private readonly batchSize: number;
  private readonly ctx: DecodeContext;
  private readonly decoded: Decoded = newDecoded();

  // The batch being filled: puts and deletes of distinct keys (a key seen twice flushes first).
  private readonly putKeys: Buffer;
  private readonly putValues: Buffer;
  private readonly putRevision: Float64Array;
  private readonly putCreated: Float64Array;
  private readonly putLive: Uint8Array;
  private readonly putI6pn: Uint8Array;
  private readonly putKey: string[];
  /** A local endpoint's address and veth name (null for the rest). */
  private readonly putLocal: ({ address: string; ifname: string } | null)[];
  /** A named i6pn endpoint's name, cluster and rank, for the names index (null for the rest). */
  private readonly putNames: (NameFields | null)[];
  private putCount = 0;
  private readonly delKeys: Buffer;
  private readonly delKey: string[];
  private delCount = 0;
  private readonly inBatch = new Set<string>();

  private readonly kp: KeyParts = { workspace: 0, hi: 0, lo: 0 };
  private readonly id: EndpointId = { workspace: 0, hi: 0, lo: 0 };

  /** A full read under way: every entry applied or matched is marked; the end sweeps. */
  private fullRead = false;
  /** A background reconcile under way, reading up to this revision. */
  private reconcileUpTo = 0;
  private reconciling = false;
  /** Keys the live reader deleted while the reconcile runs (the reconcile must not bring them back). */
  private liveDeleted = new Set<string>();
  /** The next full read or reconcile re-applies every entry, even one whose revision was applied. */
  private forceFull = false;
  /** The local endpoints are those of the adopted veths, not yet read from the store. */
  private localsSeeded = false;
  private lastRevision_ = 0;
  /** The map was empty when the full read began: all it holds was applied by this read (no listing to sweep). */
  private startedEmpty = false;
  /** Whether the position may be recorded (the map reflects the stream up to lastRevision). */
  private positioned = false;
  private stream = 0n;
  /** Batches written so far. */
  private flushes = 0;
  /** Entries refused because the map was full since the last full read or reconcile began. */
  private waitingForRoom = 0;

  constructor(o: SyncOptions) {
    this.o = o;
    const n = (this.batchSize = o.batchSize ?? 2048);
    this.putKeys = Buffer.alloc(n * 16);
    this.putValues = Buffer.alloc(n * ENDPOINT_VALUE_SIZE);
    this.putRevision = new Float64Array(n);
    this.putCreated = new Float64Array(n);
    this.putLive = new Uint8Array(n);
    this.putI6pn = new Uint8Array(n);
    this.putKey = new Array<string>(n).fill('');
    this.putLocal = new Array<{ address: string; ifname: string } | null>(n).fill(null);
    this.putNames = new Array<NameFields | null>(n).fill(null);
    this.delKeys = Buffer.alloc(n * 16);
    this.delKey = new Array<string>(n).fill('');
    this.ctx = new DecodeContext(o.region, o.regionId, o.node);
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

  get inFullRead(): boolean {
    return this.fullRead;
  }

  // ------------------------------------------------------------ starting points

  /**
   * A full read of `stream` starts: from here until endFullRead(), every valid
   * key is marked. The recorded position is cleared until the read is swept.
   */
  beginFullRead(stream: bigint, expected = 0): void {
    this.abortReconcile();
    this.flush();
    // Sized for the region at once: no rehash on the way (the table holds nothing a full read does not rebuild).
    if (this.known.size === 0 && expected > 0) this.known = new EndpointTable(expected);
    this.known.newEpoch();
    this.waitingForRoom = 0;
    this.startedEmpty = this.known.size === 0 && this.o.map.endpointsEmpty();
    this.fullRead = true;
    this.o.names?.setComplete(false);
    this.stream = stream;
    this.lastRevision_ = 0;
    this.positioned = false;
    this.o.map.writeSyncState({ revision: 0, stream, region: this.o.regionId });
  }

  /**
   * The maps reflect `stream` up to `revision` (a restart or a reconnect):
   * follow from there. `locals`, when given, are the local endpoints known
   * without reading the store (the adopted veths), kept until a reconcile.
   */
  resumeAt(stream: bigint, revision: number, locals?: readonly LocalEndpoint[]): void {
    this.stream = stream;
    this.lastRevision_ = revision;
    this.positioned = true;
    // The table is empty: names are known again once the reconcile after the resume has read the region.
    this.o.names?.setComplete(false);
    if (locals) {
      for (const l of locals) this.locals.set(l.key, l);
      this.localsSeeded = true;
      if (locals.length) this.localsChanged();
    }
    this.updateGauges();
  }

  // ------------------------------------------------------------ the live reader

  /**
   * Take one message of the live reader (stream order). Batches are written
   * when full; the caller flushes when its input pauses. Returns true when a
   * batch was written.
   */
  ingest(key: string, data: Uint8Array, revision: number, op: Operation, createdMs: number): boolean {
    const kp = this.kp;
    if (revision > this.lastRevision_) this.lastRevision_ = revision;
    if (!parseBucketKey(key, kp)) {
      this.reject(key, revision, 'key', `key ${JSON.stringify(key)} is not <workspace id 8 hex>.<endpoint id 16 hex>`);
      return this.full();
    }
    if (this.inBatch.has(key)) this.flush();
    if (op !== Operation.PUT) {
      if (this.rejected.size) this.rejected.delete(key);
      if (this.reconciling) this.liveDeleted.add(key);
      this.addDelete(key, kp);
      return this.full();
    }
    if (this.fullRead && !this.forceFull && this.known.get(this.idOf(kp)) === revision) {
      this.known.mark(this.id);
      return false;
    }
    this.take(key, kp, data, revision, createdMs, !this.fullRead);
    return this.full();
  }

  // ------------------------------------------------------------ the reconcile

  /** A reconcile starts: it reads the stream up to `upTo` (the live reader's position now). */
  beginReconcile(upTo: number): void {
    this.flush();
    this.known.newEpoch();
    this.waitingForRoom = 0;
    this.reconciling = true;
    this.reconcileUpTo = upTo;
    this.liveDeleted = new Set();
  }

  /** Take one message of the reconcile's reader. Returns true when a batch was written. */
  reconcile(key: string, data: Uint8Array, revision: number, op: Operation): boolean {
    if (!this.reconciling) return false;
    const kp = this.kp;
    if (!parseBucketKey(key, kp)) return false; // counted by the live reader
    const id = this.idOf(kp);
    if (revision > this.reconcileUpTo) {
      // Newer than the reconcile: the live reader has it or will have it.
      this.known.mark(id);
      return false;
    }
    if (this.liveDeleted.has(key) || this.inBatch.has(key)) return false;
    const applied = this.known.get(id);
    if (op !== Operation.PUT) {
      if (applied !== undefined) this.addDelete(key, kp); // a delete that was missed
      return this.full();
    }
    if (applied !== undefined && applied >= revision && !this.forceFull) {
      this.known.mark(id);
      return false;
    }
    this.take(key, kp, data, revision, 0, false);
    return this.full();
  }

  /** The reconcile read everything: sweep what neither reader marked. Returns how many entries were removed. */
  async endReconcile(): Promise<number> {
    if (!this.reconciling) return 0;
    this.flush();
    const removed = await this.sweep();
    this.reconciling = false;
    this.liveDeleted = new Set();
    if (this.localsSeeded) this.localsSeeded = false;
    this.o.names?.setComplete(true);
    return removed;
  }

  /** A reconcile was abandoned (its reader failed): forget the marks, sweep nothing. */
  abortReconcile(): void {
    if (!this.reconciling) return;
    this.flush();
    this.reconciling = false;
    this.liveDeleted = new Set();
  }

  /** Whether a reconcile must re-read the region: the local endpoints are still the adopted ones. */
  get needsReconcile(): boolean {
    return this.localsSeeded || this.forceFull || this.namesWaiting;
  }

  /**
   * Whether the resolver waits for a read of the whole region: after a resume
   * the names index holds nothing, and every name of the zone is SERVFAIL
   * until a reconcile has read the region.
   */
  get namesWaiting(): boolean {
    return this.o.names !== undefined && !this.o.names.complete;
  }

  /**
   * The full read has caught up: flush, then sweep every map entry it did not
   * mark, and record the position. Returns how many entries were removed.
   */
  async endFullRead(): Promise<number> {
    this.flush();
    if (!this.fullRead) return 0;
    const removed = await this.sweep(this.startedEmpty);
    this.startedEmpty = false;
    this.fullRead = false;
    this.localsSeeded = false;
    this.positioned = true;
    this.recordPosition();
    this.o.names?.setComplete(true);
    return removed;
  }


  // ------------------------------------------------------------ batches

  private idOf(kp: KeyParts): EndpointId {
    this.id.workspace = kp.workspace;
    this.id.hi = kp.hi;
    this.id.lo = kp.lo;
    return this.id;
  }

  private full(): boolean {
    if (this.putCount + this.delCount < this.batchSize) return false;
    this.flush();
    return true;
  }

  /** Decode a PUT and queue it, or reject it (and remove what the key held). */
  private take(key: string, kp: KeyParts, data: Uint8Array, revision: number, createdMs: number, live: boolean): void {
    const o = this.o;
    const d = this.decoded;
    if (!decodeEndpoint(data, kp, this.ctx, d)) {
      const r = this.whyInvalid(key, data, revision);
      if (r === null) {
        this.addDelete(key, kp);
        return;
      }
      fromRecord(r, this.ctx, d);
    }
    if (this.rejected.size) this.rejected.delete(key);
    const i = this.putCount++;
    writeEndpointAddress(this.putKeys, i * 16, kp.workspace, o.regionId, kp.hi, kp.lo);
    let ifindex = 0;
    if (d.local) {
      const ifname = ifnameOf(d);
      ifindex = o.ifindexOf(ifname) ?? 0;
      this.putLocal[i] = { address: addressOf(d), ifname };
    } else {
      this.putLocal[i] = null;
    }
    this.putNames[i] = o.names && d.i6pn && hasNames(d) ? { address: addressOf(d), name: nameOf(d), cluster: clusterOf(d), rank: rankOf(d) } : null;
    writeEndpointValue(this.putValues, i * ENDPOINT_VALUE_SIZE, kp.workspace, o.regionId, flagsOf(d), d.node, ifindex);
    this.putI6pn[i] = d.i6pn ? 1 : 0;
    this.putRevision[i] = revision;
    this.putCreated[i] = createdMs;
    this.putLive[i] = live ? 1 : 0;
    this.putKey[i] = key;
    this.inBatch.add(key);
  }

  private addDelete(key: string, kp: KeyParts): void {
    const i = this.delCount++;
    writeEndpointAddress(this.delKeys, i * 16, kp.workspace, this.o.regionId, kp.hi, kp.lo);
    this.delKey[i] = key;
    this.inBatch.add(key);
  }

  /** The slow path: the schema's own verdict on an entry the fast decoder did not accept. */
  private whyInvalid(key: string, data: Uint8Array, revision: number): EndpointRecord | null {
    const o = this.o;
    const v = validateEndpointEntry(`${o.region}.${key}`, data);
    if (v.ok && v.record.region === o.region && v.record.regionId === o.regionId) return v.record;
    if (v.ok) {
      this.reject(key, revision, 'region', `endpoint of region ${v.record.region} (id ${regionIdHex(v.record.regionId)}) in the bucket of region ${o.region} (id ${regionIdHex(o.regionId)})`);
    } else {
      this.reject(key, revision, v.reason, v.message);
    }
    return null;
  }

  private reject(key: string, revision: number, reason: InvalidReason, message: string): void {
    if (this.rejected.get(key) === revision) return;
    this.rejected.set(key, revision);
    this.o.metrics.membershipUpdates.inc({ result: 'rejected' });
    this.o.metrics.membershipRejected.inc({ reason });
    this.o.log.warn({ key, revision, reason, problem: message }, 'invalid endpoint entry rejected');
  }

  /** The endpoint the 16 address bytes at `at` name (the region is the agent's). */
  private idAt(a: Uint8Array, at: number): EndpointId {
    this.id.workspace = workspaceAt(a, at);
    this.id.hi = endpointHalfAt(a, at, 0);
    this.id.lo = endpointHalfAt(a, at, 1);
    return this.id;
  }

  /** Write the batch taken so far. */
  flush(): void {
    const dels = this.delCount;
    const puts = this.putCount;
    if (dels === 0 && puts === 0) return;
    this.flushes++;
    this.delCount = 0;
    this.putCount = 0;
    this.inBatch.clear();
    const o = this.o;
    const m = o.metrics;
    const mark = this.fullRead || this.reconciling;
    let localsChanged = false;
    let roomFreed = false;

    if (dels) {
      try {
        roomFreed = o.map.deleteEndpointBatch(this.delKeys, dels) > 0;
        for (let i = 0; i < dels; i++) {
          const id = this.idAt(this.delKeys, i * 16);
          this.known.delete(id);
          o.names?.removed(this.delKey[i]!, id.workspace);
          if (this.locals.size && this.locals.delete(`${o.region}.${this.delKey[i]}`)) localsChanged = true;
        }
      } catch (err) {
        // Left in the map; the next reconcile sweeps them.
        this.forceFull = true;
        o.log.error({ err, count: dels }, 'removing endpoints from the map failed');
      }
    }

    if (puts) {
      let result: UpsertResult;
      try {
        result = o.map.upsertEndpointBatch(this.putKeys, this.putValues, puts);
      } catch (err) {
        result = { applied: 0, failed: Array.from({ length: puts }, (_, index) => ({ index, addr: new Uint8Array(this.putKeys.subarray(index * 16, index * 16 + 16)), error: err as never })) };
      }
      const failed = result.failed.length ? new Set(result.failed.map((f) => f.index)) : null;
      const now = Date.now();
      let full = 0;
      for (const f of result.failed) {
        m.membershipUpdates.inc({ result: 'failed' });
        const code = (f.error as { code?: string } | undefined)?.code ?? '';
        if (isMapFull(code)) {
          full++;
          m.mapFull.inc();
        } else {
          o.log.error({ key: this.putKey[f.index], address: formatAddress(f.addr), err: f.error }, 'writing an endpoint into the map failed');
        }
      }
      m.membershipUpdates.inc({ result: 'applied' }, puts - result.failed.length);
      for (let i = 0; i < puts; i++) {
        const id = this.idAt(this.putKeys, i * 16);
        const r = this.putLocal[i]!;
        this.putLocal[i] = null;
        const named = this.putNames[i]!;
        this.putNames[i] = null;
        if (failed?.has(i)) {
          // Not in the map: unreachable, and retried by the next reconcile.
          this.known.delete(id);
          o.names?.removed(this.putKey[i]!, id.workspace);
          if (this.locals.size && this.locals.delete(`${o.region}.${this.putKey[i]}`)) localsChanged = true;
          this.forceFull = true;
          continue;
        }
        if (this.putLive[i]) m.applyLatency.observe(Math.max(0, (now - this.putCreated[i]!) / 1000));
        this.known.set(id, this.putRevision[i]!, mark, this.putI6pn[i] === 1);
        o.names?.applied(this.putKey[i]!, id.workspace, this.putI6pn[i] === 1, this.putKeys, i * 16, named);
        if (r !== null) {
          const key = `${o.region}.${this.putKey[i]}`;
          const prev = this.locals.get(key);
          const next: LocalEndpoint = {
            key,
            addr: new Uint8Array(this.putKeys.subarray(i * 16, i * 16 + 16)),
            address: r.address,
            ifname: r.ifname,
            i6pn: this.putI6pn[i] === 1,
            workspace: id.workspace,
            region: o.regionId,
            writtenIfindex: this.putValues.readUInt32LE(i * ENDPOINT_VALUE_SIZE + S_IFINDEX),
          };
          this.locals.set(key, next);
          if (!prev || prev.ifname !== next.ifname || prev.i6pn !== next.i6pn || prev.address !== next.address) localsChanged = true;
        } else if (this.locals.size && this.locals.delete(`${o.region}.${this.putKey[i]}`)) {
          localsChanged = true;
        }
      }
      if (full) {
        this.waitingForRoom += full;
        o.log.error(
          { refused: full, capacity: 'see i6pn_map_capacity{map="endpoints"}' },
          'endpoints map is full: new endpoints stay unreachable (nothing was evicted); raise --max-endpoints (takes a teardown) or remove endpoints',
        );
      }
    }
    this.recordPosition();
    this.updateGauges();
    if (localsChanged) this.localsChanged();
    if (roomFreed && this.waitingForRoom > 0) {
      o.log.info({ waiting: this.waitingForRoom }, 'room in the endpoints map again: reading the region for the endpoints it refused');
      o.onRoom?.();
    }
  }

  /** The local endpoints changed: the names index's queriers, then the attacher. */
  private localsChanged(): void {
    this.o.names?.setLocals(this.locals.values(), this.known);
    this.o.onLocalsChanged();
  }

  /** The maps reflect the stream up to lastRevision: say so in sync_state. */
  private recordPosition(): void {
    if (!this.positioned || this.fullRead) return;
    try {
      this.o.map.writeSyncState({ revision: this.lastRevision_, stream: this.stream, region: this.o.regionId });
    } catch (err) {
      this.o.log.warn({ err }, 'recording the membership position failed; a restart will read the region whole');
    }
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
    const keys = Buffer.from(l.addr);
    const values = Buffer.alloc(ENDPOINT_VALUE_SIZE);
    const flags = (l.i6pn ? abi.EndpointFlag.I6PN : 0) | abi.EndpointFlag.LOCAL;
    writeEndpointValue(values, 0, l.workspace, l.region, flags, this.ctx.nodeId, ifindex);
    const r = this.o.map.upsertEndpointBatch(keys, values, 1);
    if (r.failed.length === 0) l.writtenIfindex = ifindex;
    else this.o.log.warn({ key, ifindex, err: r.failed[0]!.error }, "updating a local endpoint's ifindex failed");
  }

  /**
   * Delete every map entry of this region that is not marked (and every entry
   * of another region). Yields to the event loop between chunks.
   */
  private async sweep(onlyApplied = false): Promise<number> {
    const flushesBefore = this.flushes;
    const stale: Uint8Array[] = [];
    let inKernel = 0;
    if (onlyApplied) {
      // Everything in the map came from this read (it began empty): the unmarked are the applied ones it deleted since.
      inKernel = this.known.size;
      this.known.forEachUnmarked((id) => {
        const a = new Uint8Array(16);
        writeEndpointAddress(a, 0, id.workspace, this.o.regionId, id.hi, id.lo);
        stale.push(a);
      });
    }
    for (const chunk of onlyApplied ? [] : this.o.map.endpointAddresses()) {
      for (const addr of chunk) {
        inKernel++;
        if (regionAt(addr, 0) !== this.o.regionId || !this.known.isMarked(this.idAt(addr, 0))) stale.push(addr);
      }
      await yieldToLoop();
    }
    let removed = 0;
    if (stale.length) {
      const keys = Buffer.alloc(stale.length * 16);
      stale.forEach((a, i) => keys.set(a, i * 16));
      removed = this.o.map.deleteEndpointBatch(keys, stale.length);
      this.o.log.info({ removed, sample: stale.slice(0, 5).map((a) => formatAddress(a)) }, 'swept map entries that the store no longer holds');
    }
    let localsChanged = false;
    this.known.sweepUnmarked((id) => {
      const key = `${hex8(id.workspace)}.${hex8(id.hi)}${hex8(id.lo)}`;
      this.o.names?.removed(key, id.workspace);
      if (this.locals.delete(`${this.o.region}.${key}`)) localsChanged = true;
    });
    // Seeded locals the read did not confirm (their entry is gone from the store) go too.
    for (const [key, l] of this.locals) {
      if (!this.known.has(this.idAt(l.addr, 0))) {
        this.locals.delete(key);
        localsChanged = true;
      }
    }
    const after = inKernel - removed;
    // Updates applied while the sweep listed the map make the count inexact: compare only a quiet sweep.
    this.forceFull = this.flushes === flushesBefore && after !== this.known.size;
    if (this.forceFull) {
      this.o.log.warn({ inMap: after, applied: this.known.size }, 'the endpoints map and the applied state disagree; the next reconcile re-applies every entry');
    }
    this.updateGauges();
    if (this.flushes === flushesBefore) this.o.metrics.mapEntries.set({ map: 'endpoints' }, after);
    if (localsChanged) this.localsChanged();
    return removed;
  }
}

/** Offset of the ifindex in an endpoints map value. */
const S_IFINDEX = abi.structs.i6pn_endpoint.fields.ifindex.offset;
