/**
 * The i6pn dataplane in the project's own terms: load the programs of
 * build/bpf/i6pn.bpf.o, adopt or pin their maps, attach them to the uplink
 * (XDP) and to endpoint veths (TC), fill the maps with endpoints and local
 * interfaces, read counters and drop events. Layouts come from
 * abi.generated.ts (the object's BTF); the FFI is libbpf.ts. No Buffer crosses
 * this module's surface. Running packets through the programs
 * (BPF_PROG_TEST_RUN) is a test tool, test/tools/run-packet.ts, that finds
 * them by programIds().
 *
 * Life cycle (ARCHITECTURE.md): with a pinDir, every map is pinned at
 * `<pinDir>/<map>` and the uplink's XDP link at `<pinDir>/xdp_uplink_<ifindex>`,
 * so the dataplane keeps enforcing when the agent exits, and the next
 * Dataplane.open() on the same pinDir adopts the maps and replaces the
 * programs atomically (link update for XDP, fixed handle and priority with
 * replace for TC). Dataplane.teardown(pinDir) removes it all.
 *
 * libbpf keeps one global log callback: the last open() with a logger wins.
 */
import { existsSync, mkdirSync, readdirSync, rmSync, rmdirSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';

import * as abi from './abi.generated.js';
import {
  BatchError,
  BpfObject,
  E2BIG,
  ENOENT,
  EOPNOTSUPP,
  LibbpfError,
  LinkFd,
  MapFd,
  MapType,
  RingBuffer,
  TcAttachPoint,
  XdpFlags,
  closeFd,
  mapInfoByFd,
  objGet,
  perCpuStride,
  possibleCpus,
  setLogger,
  tcAttach,
  tcDetach,
  tcHookCreate,
  tcQuery,
  watchReadable,
  type BpfMap,
  type BpfProgram,
  type TcFilter,
} from './libbpf.js';

export { LibbpfError, BatchError } from './libbpf.js';

// ---------------------------------------------------------------- domain types

export type HookName = abi.HookName;
export type VerdictName = abi.VerdictName;
export type ReasonName = abi.ReasonName;
export type ModeName = abi.ModeName;

export interface DataplaneConfig {
  /** This node's id. */
  node: number;
  /** This node's region id. */
  region: number;
  mode: ModeName;
  /** Drop-event budget per CPU per second; 0 disables events. */
  eventsPerSec: number;
  /** The uplink's ifindex (0: none yet): the one way in for non-local private sources. */
  uplinkIfindex?: number;
  /** Pass an endpoint's own non-private IPv6 traffic (internet egress through the node). */
  forwardNonPrivate?: boolean;
  /** Deliver private packets to endpoints bound on this node straight out of their veth, past the node's stack. */
  localFastPath?: boolean;
}

export interface EndpointFlags {
  /** Private networking enabled. */
  i6pn: boolean;
  /** Served by this node. */
  local: boolean;
}

export interface Endpoint {
  /** The 16-byte private address. */
  addr: Uint8Array;
  workspace: number;
  region: number;
  node: number;
  flags: EndpointFlags;
  /** Host-side veth when local and attached, else 0. */
  ifindex: number;
}

export interface EndpointFailure {
  /** Position in the input array. */
  index: number;
  addr: Uint8Array;
  /** E2BIG: the endpoints map is full (the endpoint stays unreachable; nothing was evicted). */
  error: LibbpfError;
}

export interface UpsertResult {
  /** Entries written. */
  applied: number;
  /** Entries not written, with why. */
  failed: EndpointFailure[];
}

export interface LocalIface {
  ifindex: number;
  /** The endpoint address this veth is bound to (for the veth's life). */
  addr: Uint8Array;
  i6pn: boolean;
  /** The endpoint was revoked: the hooks drop everything in and out until the veth is gone. */
  sealed: boolean;
}

/** A tunneled (endpoint address, protocol, port): what the region's gateways may reach (the tunnels map). */
export interface TunnelEntry {
  addr: Uint8Array;
  /** IP protocol number (6: TCP). */
  proto: number;
  port: number;
  /** The tunnel's 48-bit id (lib/schema.ts), for reading the map back. */
  id: number;
}

export interface CounterRow {
  hook: HookName;
  verdict: VerdictName;
  reason: ReasonName;
  packets: bigint;
  bytes: bigint;
}

export interface DropEvent {
  /** bpf_ktime_get_ns() at the drop (CLOCK_MONOTONIC, since boot). */
  tsNs: bigint;
  /** The packet was IPv6: src, dst and proto are its own; otherwise they are zero and null. */
  ipv6: boolean;
  src: Uint8Array;
  dst: Uint8Array;
  /** The interface the hook runs on. */
  ifindex: number;
  /** The frame's length in bytes. */
  len: number;
  hook: HookName;
  verdict: VerdictName;
  reason: ReasonName;
  /** Upper-layer protocol number (the fixed header's next header when the chain could not be walked); null: not IPv6. */
  proto: number | null;
  /** TCP or UDP ports, else null. */
  ports: { src: number; dst: number } | null;
  /** ICMPv6 type and code, else null. */
  icmp: { type: number; code: number } | null;
}

/** Drop events that were never written (i6pn_event_stats, plus the open budget window), summed over CPUs. */
export interface EventLosses {
  /** Drops past the per-CPU budget (--events-per-sec): not sampled. */
  overBudget: bigint;
  /** Events the ring buffer had no room for. */
  ringFull: bigint;
}


/** Pino's Logger fits; so does anything with these three methods. */
export interface DataplaneLogger {
  warn(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  debug(obj: object, msg?: string): void;
}

export interface OpenOptions {
  /** The compiled object, e.g. build/bpf/i6pn.bpf.o. */
  object: string;
  /** bpffs directory for pins (created if absent); none: nothing is pinned and everything dies with close(). */
  pinDir?: string;
  /** Capacity of the endpoints map (default: the object's). */
  maxEndpoints?: number;
  /** Capacity of the local_ifaces map (default: the object's). */
  maxLocalIfaces?: number;
  /** Receives libbpf's log (the verifier's output on a failed load). */
  logger?: DataplaneLogger;
}

/**
 * Where from_fabric runs on the uplink. `xdp`: before any skb exists, the
 * right hook on a NIC whose driver runs XDP natively. `tc`: TC ingress, the
 * right hook on a veth (any XDP program there turns the device's
 * segmentation offload off and costs most of its throughput) or a NIC
 * without native XDP. One decision function, the same counters.
 */
export type UplinkHook = 'xdp' | 'tc';

export interface AttachUplinkOptions {
  /** xdp by default. */
  hook?: UplinkHook;
  /** With xdp: native (driver) XDP by default; generic runs after skb allocation, for NICs without XDP. */
  mode?: 'native' | 'generic';
}

export class DataplaneError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'DataplaneError';
  }
}

// ---------------------------------------------------------------- names, layouts

/** from_fabric's decision at TC ingress of the uplink (counted as from_fabric). */
const FROM_FABRIC_TC = 'from_fabric_tc';
/** Each hook's program, named as the hook in bpf/i6pn.bpf.c. */
const HOOK_PROGRAMS: readonly HookName[] = abi.HOOK_NAMES;

/** TC filter slot reserved for i6pn on every endpoint veth: priority 1 runs first. */
export const TC_HANDLE = 0x1e6;
export const TC_PRIORITY = 1;

const COUNTERS_MAX = abi.HOOK_MAX * abi.VERDICT_MAX * abi.REASON_MAX;

/** Index of a counter, as i6pn_counter_index() in bpf/i6pn.h. */
export function counterIndex(hook: number, verdict: number, reason: number): number {
  return (hook * abi.VERDICT_MAX + verdict) * abi.REASON_MAX + reason;
}

const S = abi.structs;
const IN6_ADDR_SIZE = 16;

interface MapSpec {
  name: abi.MapName;
  type: number;
  keySize: number;
  valueSize: number;
  /** Required max_entries: an array's index space is part of the ABI; hash maps and the ring buffer are sized at load. */
  maxEntries?: number;
  /**
   * Created in the kernel and pinned: every map but the BTF carrier i6pn_abi,
   * which exists only to carry bpf/i6pn.h's enums into the object's BTF for
   * gen-abi.ts, and which no program reads.
   */
  create: boolean;
}

/** The maps this agent was built against (bpf/maps.h through the BTF; see gen-abi.ts). */
const MAP_SPECS: MapSpec[] = (Object.entries(abi.maps) as Array<[abi.MapName, (typeof abi.maps)[abi.MapName]]>).map(
  ([name, m]) => ({
    name,
    type: m.type,
    keySize: m.keySize,
    valueSize: m.valueSize,
    maxEntries: m.type === MapType.ARRAY || m.type === MapType.PERCPU_ARRAY ? m.maxEntries : undefined,
    create: name !== 'i6pn_abi',
  }),
);

function u32key(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0, 0);
  return b;
}

function checkAddr(addr: Uint8Array, what: string): void {
  if (!(addr instanceof Uint8Array) || addr.length !== IN6_ADDR_SIZE) {
    throw new RangeError(`${what}: an address is 16 bytes, got ${addr instanceof Uint8Array ? addr.length : typeof addr}`);
  }
}

function checkUint(n: number, bits: 16 | 32, what: string): void {
  if (!Number.isInteger(n) || n < 0 || n > (bits === 16 ? 0xffff : 0xffff_ffff)) {
    throw new RangeError(`${what} must be an unsigned ${bits}-bit integer, got ${n}`);
  }
}

function encodeEndpoint(e: Endpoint, into: Buffer, at: number): void {
  const F = S.i6pn_endpoint.fields;
  into.writeUInt32LE(e.workspace, at + F.workspace.offset);
  into.writeUInt16LE(e.region, at + F.region.offset);
  into.writeUInt16LE((e.flags.i6pn ? abi.EndpointFlag.I6PN : 0) | (e.flags.local ? abi.EndpointFlag.LOCAL : 0), at + F.flags.offset);
  into.writeUInt32LE(e.node, at + F.node.offset);
  into.writeUInt32LE(e.ifindex, at + F.ifindex.offset);
}

/** Size of one endpoints map value, and of one slot of an EndpointBatch's values. */
export const ENDPOINT_VALUE_SIZE = S.i6pn_endpoint.size;

/**
 * One endpoints map value written in place (the agent's hot path fills a batch
 * buffer with these, no object per entry). flags: EndpointFlag bits.
 */
export function writeEndpointValue(into: Buffer, at: number, workspace: number, region: number, flags: number, node: number, ifindex: number): void {
  const F = S.i6pn_endpoint.fields;
  into.fill(0, at, at + S.i6pn_endpoint.size);
  into.writeUInt32LE(workspace >>> 0, at + F.workspace.offset);
  into.writeUInt16LE(region, at + F.region.offset);
  into.writeUInt16LE(flags, at + F.flags.offset);
  into.writeUInt32LE(node >>> 0, at + F.node.offset);
  into.writeUInt32LE(ifindex >>> 0, at + F.ifindex.offset);
}

/** Where the membership in the maps stands (the sync_state map). */
export interface SyncState {
  /** Last store revision applied; 0: none. */
  revision: number;
  /** Hash of the stream the revision belongs to (bigint: 64 bits). */
  stream: bigint;
  region: number;
}

/** An endpoints map value at byte `at` of `view`: the one decoder of struct i6pn_endpoint. */
export function readEndpointValue(view: DataView, at: number): Omit<Endpoint, 'addr'> {
  const F = S.i6pn_endpoint.fields;
  const flags = view.getUint16(at + F.flags.offset, true);
  return {
    workspace: view.getUint32(at + F.workspace.offset, true),
    region: view.getUint16(at + F.region.offset, true),
    node: view.getUint32(at + F.node.offset, true),
    flags: { i6pn: (flags & abi.EndpointFlag.I6PN) !== 0, local: (flags & abi.EndpointFlag.LOCAL) !== 0 },
    ifindex: view.getUint32(at + F.ifindex.offset, true),
  };
}

function decodeEndpoint(addr: Uint8Array, b: Buffer): Endpoint {
  return { addr: new Uint8Array(addr), ...readEndpointValue(new DataView(b.buffer, b.byteOffset, b.length), 0) };
}

function validateEndpoint(e: Endpoint, i: number): void {
  checkAddr(e.addr, `endpoint ${i}`);
  checkUint(e.workspace, 32, `endpoint ${i} workspace`);
  checkUint(e.region, 16, `endpoint ${i} region`);
  checkUint(e.node, 32, `endpoint ${i} node`);
  checkUint(e.ifindex, 32, `endpoint ${i} ifindex`);
}

/** struct i6pn_tunnel_key: the address, the protocol and the port (host byte order, as the program compares it). */
function encodeTunnelKey(t: Omit<TunnelEntry, 'id'>): Buffer {
  checkAddr(t.addr, 'tunnel');
  checkUint(t.port, 16, 'tunnel port');
  if (!Number.isInteger(t.proto) || t.proto < 0 || t.proto > 255) throw new RangeError(`tunnel protocol must be an IP protocol number, got ${t.proto}`);
  const F = S.i6pn_tunnel_key.fields;
  const k = Buffer.alloc(S.i6pn_tunnel_key.size);
  k.set(t.addr, F.addr.offset);
  k.writeUInt8(t.proto, F.proto.offset);
  k.writeUInt16LE(t.port, F.port.offset);
  return k;
}

function decodeDropEvent(b: Buffer): DropEvent {
  const F = S.i6pn_drop_event.fields;
  // A record of another layout (an older agent's programs, before an upgrade replaced them) is not misread.
  if (b.length !== S.i6pn_drop_event.size) throw new DataplaneError(`drop event of ${b.length} bytes, expected ${S.i6pn_drop_event.size}`);
  const label = <T extends string>(names: readonly T[], v: number, what: string): T => {
    const n = names[v];
    if (n === undefined) throw new DataplaneError(`drop event with unknown ${what} ${v}`);
    return n;
  };
  const flags = b.readUInt8(F.flags.offset);
  const ipv6 = (flags & abi.EventFlag.IPV6) !== 0;
  return {
    tsNs: b.readBigUInt64LE(F.ts_ns.offset),
    ipv6,
    src: new Uint8Array(b.subarray(F.src.offset, F.src.offset + 16)),
    dst: new Uint8Array(b.subarray(F.dst.offset, F.dst.offset + 16)),
    ifindex: b.readUInt32LE(F.ifindex.offset),
    len: b.readUInt32LE(F.len.offset),
    hook: label(abi.HOOK_NAMES, b.readUInt32LE(F.hook.offset), 'hook'),
    verdict: label(abi.VERDICT_NAMES, b.readUInt32LE(F.verdict.offset), 'verdict'),
    reason: label(abi.REASON_NAMES, b.readUInt32LE(F.reason.offset), 'reason'),
    proto: ipv6 ? b.readUInt8(F.proto.offset) : null,
    ports: flags & abi.EventFlag.PORTS ? { src: b.readUInt16LE(F.sport.offset), dst: b.readUInt16LE(F.dport.offset) } : null,
    icmp: flags & abi.EventFlag.ICMP ? { type: b.readUInt8(F.icmp_type.offset), code: b.readUInt8(F.icmp_code.offset) } : null,
  };
}

/** A batch size that keeps each syscall's buffers modest. */
const BATCH = 4096;

function isGone(err: unknown): boolean {
  return err instanceof LibbpfError && (err.code === 'ENODEV' || err.code === 'ENOENT' || err.code === 'ENXIO');
}

// ---------------------------------------------------------------- Dataplane

export class Dataplane {
  private readonly object: BpfObject;
  private readonly pinDir: string | undefined;
  private readonly programs: Map<HookName, BpfProgram>;
  private readonly fromFabricTc: BpfProgram;
  private readonly endpoints: MapFd;
  private readonly localIfaces: MapFd;
  private readonly tunnels: MapFd;
  private readonly config: MapFd;
  private readonly syncState: MapFd;
  private readonly counters: MapFd;
  private readonly eventBudget: MapFd;
  private readonly eventStats: MapFd;
  private readonly dropEventsFd: number;
  /** XDP links held by this process (without pinDir they die with close()). */
  private readonly uplinks = new Map<number, LinkFd>();
  private readonly readers = new Set<{ close(): void }>();
  private closed = false;

  private constructor(object: BpfObject, pinDir: string | undefined) {
    this.object = object;
    this.pinDir = pinDir;
    this.programs = new Map(HOOK_PROGRAMS.map((h) => [h, object.program(h)]));
    this.fromFabricTc = object.program(FROM_FABRIC_TC);
    this.endpoints = object.map('endpoints').handle();
    this.localIfaces = object.map('local_ifaces').handle();
    this.tunnels = object.map('tunnels').handle();
    this.config = object.map('config').handle();
    this.syncState = object.map('sync_state').handle();
    this.counters = object.map('counters').handle();
    this.eventBudget = object.map('event_budget').handle();
    this.eventStats = object.map('event_stats').handle();
    this.dropEventsFd = object.map('drop_events').fd;
  }

  /**
   * Open and load the object. With pinDir, maps already pinned there are
   * adopted (their contents kept); a pinned map whose type, key or value size
   * or capacity differs from what this object wants is an error (run
   * teardown, or keep the old capacity); maps not pinned yet are created and
   * pinned.
   */
  static async open(opts: OpenOptions): Promise<Dataplane> {
    if (opts.logger) {
      const l = opts.logger;
      setLogger({
        warn: (m) => l.warn({ component: 'libbpf' }, m),
        info: (m) => l.info({ component: 'libbpf' }, m),
        debug: (m) => l.debug({ component: 'libbpf' }, m),
      });
    }
    if (opts.maxEndpoints !== undefined) checkUint(opts.maxEndpoints, 32, 'maxEndpoints');
    if (opts.maxLocalIfaces !== undefined) checkUint(opts.maxLocalIfaces, 32, 'maxLocalIfaces');
    const object = BpfObject.open(opts.object);
    try {
      for (const name of HOOK_PROGRAMS) object.program(name);
      object.program(FROM_FABRIC_TC);
      if (opts.maxEndpoints) object.map('endpoints').setMaxEntries(opts.maxEndpoints);
      if (opts.maxLocalIfaces) object.map('local_ifaces').setMaxEntries(opts.maxLocalIfaces);
      for (const spec of MAP_SPECS) {
        checkObjectMap(object.map(spec.name), spec, opts.object);
        if (!spec.create) object.map(spec.name).setAutocreate(false);
      }
      if (opts.pinDir) {
        mkdirSync(opts.pinDir, { recursive: true });
        for (const spec of MAP_SPECS) {
          if (!spec.create) continue;
          const map = object.map(spec.name);
          const path = join(opts.pinDir, spec.name);
          if (existsSync(path)) checkPinnedMap(path, map);
          map.setPinPath(path);
        }
      }
      object.load();
      return new Dataplane(object, opts.pinDir);
    } catch (err) {
      object.close();
      throw err;
    }
  }

  // ------------------------------------------------------------ config

  setConfig(cfg: DataplaneConfig): void {
    checkUint(cfg.node, 32, 'config node');
    checkUint(cfg.region, 16, 'config region');
    checkUint(cfg.eventsPerSec, 32, 'config eventsPerSec');
    const mode = abi.MODE_NAMES.indexOf(cfg.mode);
    if (mode < 0) throw new RangeError(`config mode must be one of ${abi.MODE_NAMES.join(', ')}, got ${String(cfg.mode)}`);
    const F = S.i6pn_config.fields;
    const b = Buffer.alloc(S.i6pn_config.size);
    b.writeUInt32LE(cfg.node, F.node.offset);
    b.writeUInt16LE(cfg.region, F.region.offset);
    b.writeUInt32LE(mode, F.mode.offset);
    b.writeUInt32LE(cfg.eventsPerSec, F.events_per_sec.offset);
    b.writeUInt32LE(cfg.uplinkIfindex ?? 0, F.uplink_ifindex.offset);
    b.writeUInt32LE(
      (cfg.forwardNonPrivate ? abi.ConfigFlag.FORWARD_NON_PRIVATE : 0) | (cfg.localFastPath ? abi.ConfigFlag.LOCAL_FAST_PATH : 0),
      F.flags.offset,
    );
    this.config.update(u32key(0), b);
  }

  /** Record the uplink's ifindex in the config, keeping the rest (to_endpoint trusts only it for remote sources). */
  setUplinkIfindex(ifindex: number): void {
    checkUint(ifindex, 32, 'uplink ifindex');
    const F = S.i6pn_config.fields;
    const b = this.config.lookup(u32key(0)) ?? Buffer.alloc(S.i6pn_config.size);
    b.writeUInt32LE(ifindex, F.uplink_ifindex.offset);
    this.config.update(u32key(0), b);
  }

  getConfig(): DataplaneConfig {
    const F = S.i6pn_config.fields;
    const b = this.config.lookup(u32key(0));
    if (!b) throw new DataplaneError('config map has no entry 0');
    const mode = abi.MODE_NAMES[b.readUInt32LE(F.mode.offset)];
    if (!mode) throw new DataplaneError(`config map holds unknown mode ${b.readUInt32LE(F.mode.offset)}`);
    return {
      node: b.readUInt32LE(F.node.offset),
      region: b.readUInt16LE(F.region.offset),
      mode,
      eventsPerSec: b.readUInt32LE(F.events_per_sec.offset),
      uplinkIfindex: b.readUInt32LE(F.uplink_ifindex.offset),
      forwardNonPrivate: (b.readUInt32LE(F.flags.offset) & abi.ConfigFlag.FORWARD_NON_PRIVATE) !== 0,
      localFastPath: (b.readUInt32LE(F.flags.offset) & abi.ConfigFlag.LOCAL_FAST_PATH) !== 0,
    };
  }

  // ------------------------------------------------------------ endpoints

  /** Capacity of the endpoints map. */
  get maxEndpoints(): number {
    return this.endpoints.maxEntries;
  }

  /** Capacity of the local_ifaces map (veths this node can bind). */
  get maxLocalIfaces(): number {
    return this.localIfaces.maxEntries;
  }

  /**
   * Insert or overwrite endpoints, in batches. An entry the kernel refuses
   * (E2BIG when the map is full) is reported in `failed` and the rest are
   * still applied; nothing already in the map is evicted.
   */
  upsertEndpoints(entries: readonly Endpoint[]): UpsertResult {
    entries.forEach(validateEndpoint);
    const ks = this.endpoints.keySize;
    const vs = this.endpoints.valueBytes;
    const failed: EndpointFailure[] = [];
    let applied = 0;
    for (let start = 0; start < entries.length; start += BATCH) {
      const chunk = entries.slice(start, start + BATCH);
      const keys = Buffer.alloc(chunk.length * ks);
      const values = Buffer.alloc(chunk.length * vs);
      chunk.forEach((e, i) => {
        keys.set(e.addr, i * ks);
        encodeEndpoint(e, values, i * vs);
      });
      let i = 0;
      while (i < chunk.length) {
        try {
          applied += this.endpoints.updateBatch(keys.subarray(i * ks), values.subarray(i * vs), chunk.length - i);
          i = chunk.length;
        } catch (err) {
          if (!(err instanceof BatchError)) throw err;
          // Not about one entry: the map or the process is the problem.
          if (['EBADF', 'EPERM', 'EFAULT', 'ENOMEM'].includes(err.code)) throw err;
          if (err.done === 0 && (err.errno === EOPNOTSUPP || err.errno === 524 /* ENOTSUPP */)) {
            // A kernel without batch ops for this map: one by one.
            for (; i < chunk.length; i++) {
              try {
                this.endpoints.update(keys.subarray(i * ks, (i + 1) * ks), values.subarray(i * vs, (i + 1) * vs));
                applied++;
              } catch (e) {
                if (!(e instanceof LibbpfError)) throw e;
                failed.push({ index: start + i, addr: new Uint8Array(chunk[i]!.addr), error: e });
              }
            }
            break;
          }
          applied += err.done;
          const at = i + err.done;
          failed.push({
            index: start + at,
            addr: new Uint8Array(chunk[at]!.addr),
            error: new LibbpfError('bpf_map_update_batch', err.errno, 'endpoints', err.errno === E2BIG ? 'map full' : undefined),
          });
          i = at + 1;
        }
      }
    }
    return { applied, failed };
  }

  /**
   * Insert or overwrite `count` endpoints laid out in `keys` (16 bytes each)
   * and `values` (ENDPOINT_VALUE_SIZE each, see writeEndpointValue): the
   * agent's batches, without an object per entry. Refusals as upsertEndpoints
   * (their index is the entry's position in the batch).
   */
  upsertEndpointBatch(keys: Buffer, values: Buffer, count: number): UpsertResult {
    const ks = this.endpoints.keySize;
    const vs = this.endpoints.valueBytes;
    if (vs !== ENDPOINT_VALUE_SIZE) throw new DataplaneError(`endpoints map value is ${vs} bytes, the batch layout ${ENDPOINT_VALUE_SIZE}`);
    if (keys.length < count * ks || values.length < count * vs) throw new RangeError(`batch of ${count} does not fit its buffers`);
    const failed: EndpointFailure[] = [];
    let applied = 0;
    let i = 0;
    while (i < count) {
      try {
        applied += this.endpoints.updateBatch(keys.subarray(i * ks), values.subarray(i * vs), count - i);
        i = count;
      } catch (err) {
        if (!(err instanceof BatchError)) throw err;
        if (['EBADF', 'EPERM', 'EFAULT', 'ENOMEM'].includes(err.code)) throw err;
        if (err.done === 0 && (err.errno === EOPNOTSUPP || err.errno === 524 /* ENOTSUPP */)) {
          for (; i < count; i++) {
            try {
              this.endpoints.update(keys.subarray(i * ks, (i + 1) * ks), values.subarray(i * vs, (i + 1) * vs));
              applied++;
            } catch (e) {
              if (!(e instanceof LibbpfError)) throw e;
              failed.push({ index: i, addr: new Uint8Array(keys.subarray(i * ks, (i + 1) * ks)), error: e });
            }
          }
          break;
        }
        applied += err.done;
        const at = i + err.done;
        failed.push({
          index: at,
          addr: new Uint8Array(keys.subarray(at * ks, (at + 1) * ks)),
          error: new LibbpfError('bpf_map_update_batch', err.errno, 'endpoints', err.errno === E2BIG ? 'map full' : undefined),
        });
        i = at + 1;
      }
    }
    return { applied, failed };
  }

  /** Remove `count` endpoints whose addresses are laid out in `keys`; absent ones are skipped. Returns how many were removed. */
  deleteEndpointBatch(keys: Buffer, count: number): number {
    const ks = this.endpoints.keySize;
    if (keys.length < count * ks) throw new RangeError(`batch of ${count} does not fit its buffer`);
    let deleted = 0;
    let i = 0;
    while (i < count) {
      try {
        deleted += this.endpoints.deleteBatch(keys.subarray(i * ks), count - i);
        i = count;
      } catch (err) {
        if (!(err instanceof BatchError) || err.errno !== ENOENT) throw err;
        deleted += err.done;
        i += err.done + 1; // the absent one
      }
    }
    return deleted;
  }

  /** Whether the endpoints map holds no entry. */
  endpointsEmpty(): boolean {
    return this.endpoints.nextKey(null) === null;
  }

  /** Every address in the endpoints map, `chunk` at a time (batch lookups). */
  *endpointAddresses(chunk = 2048): Generator<Uint8Array[]> {
    let out: Uint8Array[] = [];
    for (const [k] of this.endpoints.entriesBatch(chunk)) {
      out.push(new Uint8Array(k));
      if (out.length === chunk) {
        yield out;
        out = [];
      }
    }
    if (out.length) yield out;
  }

  /** The membership the maps reflect, as the last agent recorded it. */
  readSyncState(): SyncState {
    const F = S.i6pn_sync_state.fields;
    const b = this.syncState.lookup(u32key(0)) ?? Buffer.alloc(S.i6pn_sync_state.size);
    return {
      revision: Number(b.readBigUInt64LE(F.revision.offset)),
      stream: b.readBigUInt64LE(F.stream.offset),
      region: b.readUInt32LE(F.region.offset),
    };
  }

  /** Record where the membership in the maps stands (after the batch it covers was written). */
  writeSyncState(st: SyncState): void {
    if (!Number.isSafeInteger(st.revision) || st.revision < 0) throw new RangeError(`sync revision must be a non-negative integer, got ${st.revision}`);
    const F = S.i6pn_sync_state.fields;
    const b = this.syncStateBuf;
    b.writeBigUInt64LE(BigInt(st.revision), F.revision.offset);
    b.writeBigUInt64LE(BigInt.asUintN(64, st.stream), F.stream.offset);
    b.writeUInt32LE(st.region >>> 0, F.region.offset);
    this.syncState.update(this.key0, b);
  }

  private readonly syncStateBuf = Buffer.alloc(S.i6pn_sync_state.size);
  private readonly key0 = u32key(0);

  /** Remove endpoints; absent ones are skipped. Returns how many were removed. */
  deleteEndpoints(addrs: readonly Uint8Array[]): number {
    addrs.forEach((a, i) => checkAddr(a, `deleteEndpoints[${i}]`));
    const ks = this.endpoints.keySize;
    let deleted = 0;
    for (let start = 0; start < addrs.length; start += BATCH) {
      const chunk = addrs.slice(start, start + BATCH);
      const keys = Buffer.alloc(chunk.length * ks);
      chunk.forEach((a, i) => keys.set(a, i * ks));
      let i = 0;
      while (i < chunk.length) {
        try {
          deleted += this.endpoints.deleteBatch(keys.subarray(i * ks), chunk.length - i);
          i = chunk.length;
        } catch (err) {
          if (!(err instanceof BatchError) || err.errno !== ENOENT) throw err;
          deleted += err.done;
          i += err.done + 1; // the absent one
        }
      }
    }
    return deleted;
  }

  getEndpoint(addr: Uint8Array): Endpoint | null {
    checkAddr(addr, 'getEndpoint');
    const b = this.endpoints.lookup(addr);
    return b ? decodeEndpoint(addr, b) : null;
  }

  listEndpoints(): Endpoint[] {
    const out: Endpoint[] = [];
    const ks = this.endpoints.keySize;
    const vs = this.endpoints.valueBytes;
    for (const { keys, values, count } of this.endpoints.lookupBatchChunks(BATCH)) {
      // One copy of the chunk's keys, viewed per endpoint: a million separate
      // 16-byte allocations cost seconds, views of one buffer do not.
      const addrs = new Uint8Array(keys.subarray(0, count * ks));
      const dv = new DataView(values.buffer, values.byteOffset, count * vs);
      for (let i = 0; i < count; i++) out.push({ addr: addrs.subarray(i * ks, (i + 1) * ks), ...readEndpointValue(dv, i * vs) });
    }
    return out;
  }

  // ------------------------------------------------------------ local interfaces

  /** Bind a veth to an endpoint (or seal it: `sealed` drops everything in and out). */
  setLocalIface(ifindex: number, iface: { addr: Uint8Array; i6pn: boolean; sealed?: boolean }): void {
    checkUint(ifindex, 32, 'ifindex');
    checkAddr(iface.addr, 'setLocalIface');
    const F = S.i6pn_local_iface.fields;
    const b = Buffer.alloc(S.i6pn_local_iface.size);
    b.set(iface.addr, F.addr.offset);
    const flags = (iface.i6pn ? abi.EndpointFlag.I6PN : 0) | (iface.sealed ? abi.EndpointFlag.SEALED : 0);
    b.writeUInt32LE(flags, F.flags.offset);
    this.localIfaces.update(u32key(ifindex), b);
  }

  /** false if it was not there. */
  deleteLocalIface(ifindex: number): boolean {
    checkUint(ifindex, 32, 'ifindex');
    return this.localIfaces.delete(u32key(ifindex));
  }

  listLocalIfaces(): LocalIface[] {
    const F = S.i6pn_local_iface.fields;
    const out: LocalIface[] = [];
    for (const [k, v] of this.localIfaces.entriesBatch()) {
      const flags = v.readUInt32LE(F.flags.offset);
      out.push({
        ifindex: k.readUInt32LE(0),
        addr: new Uint8Array(v.subarray(F.addr.offset, F.addr.offset + 16)),
        i6pn: (flags & abi.EndpointFlag.I6PN) !== 0,
        sealed: (flags & abi.EndpointFlag.SEALED) !== 0,
      });
    }
    return out;
  }

  // ------------------------------------------------------------ tunnels

  /** Add or replace a tunneled (address, protocol, port). */
  setTunnel(t: TunnelEntry): void {
    const v = Buffer.alloc(S.i6pn_tunnel.size);
    if (!Number.isSafeInteger(t.id) || t.id < 0) throw new RangeError(`tunnel id must be a non-negative integer, got ${t.id}`);
    v.writeBigUInt64LE(BigInt(t.id), S.i6pn_tunnel.fields.id.offset);
    this.tunnels.update(encodeTunnelKey(t), v);
  }

  /** false if it was not there. */
  deleteTunnel(t: Omit<TunnelEntry, 'id'>): boolean {
    return this.tunnels.delete(encodeTunnelKey(t));
  }

  listTunnels(): TunnelEntry[] {
    const F = S.i6pn_tunnel_key.fields;
    const out: TunnelEntry[] = [];
    for (const [k, v] of this.tunnels.entriesBatch()) {
      out.push({
        addr: new Uint8Array(k.subarray(F.addr.offset, F.addr.offset + 16)),
        proto: k.readUInt8(F.proto.offset),
        port: k.readUInt16LE(F.port.offset),
        id: Number(v.readBigUInt64LE(S.i6pn_tunnel.fields.id.offset)),
      });
    }
    return out;
  }

  // ------------------------------------------------------------ counters

  /**
   * Every counter, summed over CPUs, one row per (hook, verdict, reason);
   * `nonZero` leaves out rows that never counted.
   */
  readCounters(opts: { nonZero?: boolean } = {}): CounterRow[] {
    const F = S.i6pn_counter.fields;
    const stride = perCpuStride(S.i6pn_counter.size);
    const cpus = possibleCpus();
    const rows: CounterRow[] = [];
    for (const [k, v] of this.counters.entriesBatch(COUNTERS_MAX)) {
      const idx = k.readUInt32LE(0);
      let packets = 0n;
      let bytes = 0n;
      for (let c = 0; c < cpus; c++) {
        packets += v.readBigUInt64LE(c * stride + F.packets.offset);
        bytes += v.readBigUInt64LE(c * stride + F.bytes.offset);
      }
      if (opts.nonZero && packets === 0n && bytes === 0n) continue;
      const reason = idx % abi.REASON_MAX;
      const verdict = Math.floor(idx / abi.REASON_MAX) % abi.VERDICT_MAX;
      const hook = Math.floor(idx / (abi.REASON_MAX * abi.VERDICT_MAX));
      rows.push({
        hook: abi.HOOK_NAMES[hook]!,
        verdict: abi.VERDICT_NAMES[verdict]!,
        reason: abi.REASON_NAMES[reason]!,
        packets,
        bytes,
      });
    }
    return rows;
  }

  /** One counter, summed over CPUs. */
  readCounter(hook: HookName, verdict: VerdictName, reason: ReasonName): { packets: bigint; bytes: bigint } {
    const idx = counterIndex(abi.HOOK_NAMES.indexOf(hook), abi.VERDICT_NAMES.indexOf(verdict), abi.REASON_NAMES.indexOf(reason));
    if (idx < 0) throw new RangeError(`no counter ${hook}/${verdict}/${reason}`);
    const v = this.counters.lookup(u32key(idx));
    const F = S.i6pn_counter.fields;
    const stride = perCpuStride(S.i6pn_counter.size);
    let packets = 0n;
    let bytes = 0n;
    for (let c = 0; v && c < possibleCpus(); c++) {
      packets += v.readBigUInt64LE(c * stride + F.packets.offset);
      bytes += v.readBigUInt64LE(c * stride + F.bytes.offset);
    }
    return { packets, bytes };
  }

  // ------------------------------------------------------------ drop events

  /**
   * Stream drop events as they arrive (the event loop wakes on the ring
   * buffer's epoll fd). A record that cannot be decoded goes to `onInvalid`
   * (default: dropped). Returns a handle whose close() stops the stream.
   */
  watchDropEvents(
    onEvent: (e: DropEvent) => void,
    opts: { keepAlive?: boolean; onInvalid?: (err: DataplaneError) => void } = {},
  ): { close(): void } {
    const rb = new RingBuffer(this.dropEventsFd, (b) => {
      let e: DropEvent;
      try {
        e = decodeDropEvent(b);
      } catch (err) {
        opts.onInvalid?.(err as DataplaneError);
        return;
      }
      onEvent(e);
    }, 'drop_events');
    const watch = watchReadable(rb.epollFd, () => {
      try {
        rb.consume();
      } catch {
        // A closed ring buffer between wake-up and read: nothing to deliver.
      }
    });
    if (!opts.keepAlive) watch.unref();
    const handle = {
      close: () => {
        watch.stop();
        rb.close();
        this.readers.delete(handle);
      },
    };
    this.readers.add(handle);
    return handle;
  }

  /**
   * Drop events never written, summed over CPUs: past the budget (closed
   * windows from event_stats, plus the open window's drops past the budget)
   * and for want of room in the ring buffer. With events enabled, every drop
   * the counters count is an event read from the ring buffer or counted here.
   */
  readEventLosses(): EventLosses {
    const budget = this.getConfig().eventsPerSec;
    const cpus = possibleCpus();
    const SF = S.i6pn_event_stats.fields;
    const BF = S.i6pn_event_budget.fields;
    const statsStride = perCpuStride(S.i6pn_event_stats.size);
    const budgetStride = perCpuStride(S.i6pn_event_budget.size);
    const stats = this.eventStats.lookup(u32key(0));
    const open = this.eventBudget.lookup(u32key(0));
    let overBudget = 0n;
    let ringFull = 0n;
    for (let c = 0; c < cpus; c++) {
      if (stats) {
        overBudget += stats.readBigUInt64LE(c * statsStride + SF.over_budget.offset);
        ringFull += stats.readBigUInt64LE(c * statsStride + SF.ring_full.offset);
      }
      const used = open ? open.readUInt32LE(c * budgetStride + BF.used.offset) : 0;
      if (budget > 0 && used > budget) overBudget += BigInt(used - budget);
    }
    return { overBudget, ringFull };
  }

  /** The drop events waiting in the ring buffer now (consumes them). */
  drainDropEvents(): DropEvent[] {
    const events: DropEvent[] = [];
    const rb = new RingBuffer(this.dropEventsFd, (b) => events.push(decodeDropEvent(b)), 'drop_events');
    try {
      rb.consume();
    } finally {
      rb.close();
    }
    return events;
  }

  /** Instructions the verifier processed for each program (growth shows up in the build and bench). */
  verifiedInstructions(): Record<HookName | typeof FROM_FABRIC_TC, number> {
    return this.perProgram((p) => p.info().verifiedInsns);
  }

  /** `f` of every loaded program, by hook (and from_fabric_tc). */
  private perProgram(f: (prog: BpfProgram) => number): Record<HookName | typeof FROM_FABRIC_TC, number> {
    const out = {} as Record<HookName | typeof FROM_FABRIC_TC, number>;
    for (const [hook, prog] of this.programs) out[hook] = f(prog);
    out[FROM_FABRIC_TC] = f(this.fromFabricTc);
    return out;
  }

  // ------------------------------------------------------------ attach

  /**
   * XDP from_fabric on the uplink, as a bpf_link pinned at
   * `<pinDir>/xdp_uplink_<ifindex>`. A link already pinned there for this
   * interface gets the new program atomically (bpf_link_update), in the mode
   * it was created with.
   */
  attachUplink(ifindex: number, opts: AttachUplinkOptions = {}): void {
    checkUint(ifindex, 32, 'ifindex');
    tcHookCreate(ifindex);
    // Switching flavours attaches the new one first, then removes the old: never a moment with neither.
    if (opts.hook === 'tc') {
      if (this.closed) throw new DataplaneError('dataplane is closed');
      tcAttach(tcFilter(ifindex, 'ingress'), this.fromFabricTc.fd, `from_fabric_tc on ifindex ${ifindex}`);
      this.detachUplinkXdp(ifindex);
    } else {
      this.attachUplinkXdp(ifindex, opts);
      try {
        tcDetach(tcFilter(ifindex, 'ingress'));
      } catch (err) {
        if (!isGone(err)) throw err;
      }
    }
    // The node's exit: private packets leave only from their source's own veth.
    tcAttach(tcFilter(ifindex, 'egress'), this.program('to_fabric').fd, `to_fabric on ifindex ${ifindex}`);
  }

  /** Which flavour of from_fabric runs on an uplink now (kernel program ids), and to_fabric. */
  uplinkAttachment(ifindex: number): { tc: number | null; egress: number | null } {
    try {
      return { tc: tcQuery(tcFilter(ifindex, 'ingress')), egress: tcQuery(tcFilter(ifindex, 'egress')) };
    } catch (err) {
      if (isGone(err)) return { tc: null, egress: null };
      throw err;
    }
  }

  private attachUplinkXdp(ifindex: number, opts: AttachUplinkOptions): void {
    const progFd = this.program('from_fabric').fd;
    const held = this.uplinks.get(ifindex);
    if (held) {
      held.update(progFd, 'from_fabric');
      return;
    }
    const path = this.pinDir ? join(this.pinDir, `xdp_uplink_${ifindex}`) : undefined;
    if (path && existsSync(path)) {
      const link = LinkFd.open(path);
      if (link.info().xdpIfindex === ifindex) {
        try {
          link.update(progFd, 'from_fabric');
        } catch (err) {
          link.close();
          throw err;
        }
        this.uplinks.set(ifindex, link);
        return;
      }
      // The device went away (and its index may be reused): the old link is defunct.
      link.close();
      unlinkSync(path);
    }
    const flags = opts.mode === 'generic' ? XdpFlags.SKB_MODE : XdpFlags.DRV_MODE;
    let link: LinkFd;
    try {
      link = LinkFd.createXdp(progFd, ifindex, flags, `from_fabric on ifindex ${ifindex}`);
    } catch (err) {
      if (!(err instanceof LibbpfError)) throw err;
      const hint =
        err.code === 'EBUSY' || err.code === 'EEXIST'
          ? 'another XDP program is attached to this interface; remove it (ip link set dev <uplink> xdp off) or tear down its owner'
          : err.code === 'EOPNOTSUPP' && opts.mode !== 'generic'
            ? "the driver has no native XDP; attach with mode 'generic'"
            : undefined;
      throw hint ? new LibbpfError(err.call, err.errno, err.subject, hint) : err;
    }
    try {
      if (path) link.pin(path);
    } catch (err) {
      link.close();
      throw err;
    }
    this.uplinks.set(ifindex, link);
  }

  /** Detach from_fabric (either flavour) and to_fabric from the uplink and remove the pin; false if none was attached. */
  detachUplink(ifindex: number): boolean {
    const tc = detachTc(ifindex);
    return this.detachUplinkXdp(ifindex) || tc;
  }

  /** Detach the XDP flavour and remove its pin; false if it was not attached. */
  private detachUplinkXdp(ifindex: number): boolean {
    let link = this.uplinks.get(ifindex);
    this.uplinks.delete(ifindex);
    const path = this.pinDir ? join(this.pinDir, `xdp_uplink_${ifindex}`) : undefined;
    if (!link && path && existsSync(path)) link = LinkFd.open(path);
    if (!link) return false;
    try {
      link.detach();
    } catch (err) {
      if (!isGone(err) && !(err instanceof LibbpfError && err.code === 'ENOLINK')) throw err;
    } finally {
      link.close();
      if (path && existsSync(path)) unlinkSync(path);
    }
    return true;
  }

  /**
   * TC on an endpoint's host-side veth: ingress → from_endpoint, egress →
   * to_endpoint, at i6pn's fixed handle and priority, replacing whatever
   * program was there (an upgrade is atomic per direction).
   */
  attachEndpoint(ifindex: number): void {
    checkUint(ifindex, 32, 'ifindex');
    tcHookCreate(ifindex);
    tcAttach(tcFilter(ifindex, 'ingress'), this.program('from_endpoint').fd, `from_endpoint on ifindex ${ifindex}`);
    tcAttach(tcFilter(ifindex, 'egress'), this.program('to_endpoint').fd, `to_endpoint on ifindex ${ifindex}`);
  }

  /** Remove i6pn's TC filters from a veth (the clsact qdisc stays); false if none were there. */
  detachEndpoint(ifindex: number): boolean {
    return detachTc(ifindex);
  }

  /** Which i6pn programs (kernel prog ids) sit on a veth's TC hooks. */
  endpointAttachment(ifindex: number): { ingress: number | null; egress: number | null } {
    try {
      return { ingress: tcQuery(tcFilter(ifindex, 'ingress')), egress: tcQuery(tcFilter(ifindex, 'egress')) };
    } catch (err) {
      if (isGone(err)) return { ingress: null, egress: null };
      throw err;
    }
  }

  /** Kernel ids of the loaded programs (to compare with endpointAttachment). */
  programIds(): Record<HookName | typeof FROM_FABRIC_TC, number> {
    return this.perProgram((p) => p.info().id);
  }

  // ------------------------------------------------------------ life cycle

  /**
   * Release this process's handles. Pinned maps and links keep enforcing;
   * without a pinDir the uplink link is detached with its fd, while TC
   * filters stay on their veths until detachEndpoint or the veth goes.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const r of [...this.readers]) r.close();
    for (const link of this.uplinks.values()) link.close();
    this.uplinks.clear();
    this.object.close();
  }

  /**
   * Remove everything pinned under pinDir: detach the XDP links, detach the
   * TC filters from every veth registered in the pinned local_ifaces map
   * (and from every ifindex of opts.interfaces, at i6pn's handle and priority:
   * the caller lists the namespace's interfaces, links.ts interfaceIndexes()),
   * unpin the maps, remove the directory.
   */
  static teardown(pinDir: string, opts: { interfaces?: Iterable<number> } = {}): void {
    if (!existsSync(pinDir)) {
      for (const ifindex of opts.interfaces ?? []) detachTc(ifindex);
      return;
    }
    const ifindexes = new Set<number>();
    const localPath = join(pinDir, 'local_ifaces');
    if (existsSync(localPath)) {
      const m = MapFd.fromPin(localPath, 'local_ifaces');
      try {
        for (const k of m.keys()) ifindexes.add(k.readUInt32LE(0));
      } finally {
        m.close();
      }
    }
    for (const i of opts.interfaces ?? []) ifindexes.add(i);
    for (const ifindex of ifindexes) detachTc(ifindex);
    for (const name of readdirSync(pinDir)) {
      const path = join(pinDir, name);
      if (name.startsWith('xdp_uplink_')) {
        const uplink = Number(name.slice('xdp_uplink_'.length));
        if (Number.isInteger(uplink)) detachTc(uplink);
        try {
          const link = LinkFd.open(path);
          try {
            link.detach();
          } catch (err) {
            if (!isGone(err) && !(err instanceof LibbpfError && err.code === 'ENOLINK')) throw err;
          } finally {
            link.close();
          }
        } catch (err) {
          if (!isGone(err)) throw err;
        }
      }
      rmSync(path, { recursive: true, force: true });
    }
    rmdirSync(pinDir);
  }

  private program(name: HookName): BpfProgram {
    if (this.closed) throw new DataplaneError('dataplane is closed');
    return this.programs.get(name)!;
  }
}

function tcFilter(ifindex: number, dir: 'ingress' | 'egress'): TcFilter {
  return {
    ifindex,
    attachPoint: dir === 'ingress' ? TcAttachPoint.INGRESS : TcAttachPoint.EGRESS,
    handle: TC_HANDLE,
    priority: TC_PRIORITY,
  };
}

function detachTc(ifindex: number): boolean {
  let any = false;
  for (const dir of ['ingress', 'egress'] as const) {
    try {
      any = tcDetach(tcFilter(ifindex, dir)) || any;
    } catch (err) {
      if (!isGone(err)) throw err;
    }
  }
  return any;
}


function checkObjectMap(map: BpfMap, spec: MapSpec, object: string): void {
  const problems: string[] = [];
  if (map.type !== spec.type) problems.push(`type ${map.type}, expected ${spec.type}`);
  if (spec.type !== MapType.RINGBUF) {
    if (map.keySize !== spec.keySize) problems.push(`key size ${map.keySize}, ABI says ${spec.keySize}`);
    if (map.valueSize !== spec.valueSize) problems.push(`value size ${map.valueSize}, ABI says ${spec.valueSize}`);
  }
  if (spec.maxEntries !== undefined && map.maxEntries !== spec.maxEntries) {
    problems.push(`max_entries ${map.maxEntries}, ABI says ${spec.maxEntries}`);
  }
  if (problems.length) {
    throw new DataplaneError(
      `${object}: map ${spec.name} does not match agent/bpf/abi.generated.ts (${problems.join('; ')}); rebuild with \`make bpf\``,
    );
  }
}

function checkPinnedMap(path: string, map: BpfMap): void {
  const fd = objGet(path);
  try {
    const pinned = mapInfoByFd(fd, path);
    const problems: string[] = [];
    if (pinned.type !== map.type) problems.push(`type ${pinned.type} vs ${map.type}`);
    if (pinned.keySize !== map.keySize) problems.push(`key size ${pinned.keySize} vs ${map.keySize}`);
    if (pinned.valueSize !== map.valueSize) problems.push(`value size ${pinned.valueSize} vs ${map.valueSize}`);
    if (pinned.maxEntries !== map.maxEntries) problems.push(`max_entries ${pinned.maxEntries} vs ${map.maxEntries}`);
    if (problems.length) {
      throw new DataplaneError(
        `pinned map ${path} cannot be reused: pinned ${problems.join(', ')} wanted. ` +
          `Keep the old capacity (--max-endpoints ${map.name === 'endpoints' ? pinned.maxEntries : '…'}) or remove the ` +
          `pinned state first (Dataplane.teardown / the agent's teardown command), which stops enforcement until reload.`,
      );
    }
  } finally {
    closeFd(fd);
  }
}
