/**
 * The membership store on NATS JetStream KV: the one module that owns the NATS
 * connection, for the controller and the agent alike.
 *
 * Uniqueness never comes from read-then-write. Every claim is a `kv.create`
 * (create-if-absent) or a `kv.update` / delete with the revision that was read
 * (compare-and-set):
 *
 *   - a region id, a workspace id and an address are claimed by creating their
 *     key; a random id that is taken is drawn again, a name that is taken is
 *     refused;
 *   - workspace id keys and address keys are never deleted, so neither is ever
 *     handed out twice (a deleted workspace's id key gets `deletedAt`, a removed
 *     endpoint's address key gets `state: "removed"`);
 *   - a workspace name key is deleted with the workspace, so the name can be
 *     used again, for a new workspace with a new id and subnet;
 *   - one endpoint per (node, ifname), claimed in the ifnames bucket;
 *   - one endpoint per name in a workspace and region, claimed in the names
 *     bucket, and one cluster per name, claimed by creating its record in the
 *     clusters bucket; a name claim is deleted with its endpoint (or when
 *     the endpoint is renamed), so the name can be used again.
 *
 * Writing an endpoint takes four steps (address, ifname, endpoint, then a check
 * that its workspace still exists). A failed step undoes the earlier ones; a
 * process killed between steps can leave an address burnt (never reused, by
 * design) or an ifname claimed, which `endpoint remove ADDRESS` clears.
 *
 * Endpoints live in one bucket per region (endpointsBucket(region), keys
 * `<workspace id>.<endpoint id>`), created when the region is added or on first
 * use, never for a region that is not registered. The store-wide name of an
 * endpoint stays `<region>.<workspace id>.<endpoint id>` (endpointKey): claims
 * point at it, and locateEndpointKey() says where its entry lives.
 *
 * The upgrade from the first layout (one `i6pn_endpoints` bucket, keys
 * `<region>.<ws>.<ep>`): while that bucket exists, every endpoint created or
 * removed is written to both layouts (agents of the old version read the old
 * bucket), reads see the union of both (the region bucket wins for a key in
 * both), and migrateEndpoints() copies what the old bucket holds into the
 * region buckets, then, with `finish`, deletes it.
 */
import { randomBytes } from 'node:crypto';
import { DiscardPolicy, jetstream, jetstreamManager, JetStreamApiCodes, JetStreamApiError, RetentionPolicy, StorageType, type JetStreamManager } from '@nats-io/jetstream';
import { nanos } from '@nats-io/transport-node';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { NatsConnection } from '@nats-io/transport-node';
import { CredsError, connectNats, openBucket, type BucketSettings } from './nats.js';
import {
  addressHex,
  endpointIdOf,
  formatAddress,
  isPrivate,
  INFRA_WORKSPACE_ID,
  isRegionId,
  makeEndpointAddress,
  makeGatewayAddress,
  parseAddress,
  randomEndpointBits,
  randomRegionId,
  randomWorkspaceId,
  regionIdHex,
  regionOf,
  workspaceIdHex,
  workspaceOf,
  workspaceSubnet,
} from './address.js';
import {
  ADDRESSES_BUCKET,
  BUCKET_TABLE,
  bucketOfKvStream,
  endpointsBucketSpec,
  kvStream,
  CLUSTERS_BUCKET,
  GATEWAY_ROLE,
  GATEWAYS_BUCKET,
  INFRA_WORKSPACE_NAME,
  TUNNEL_PROTOCOLS,
  gatewayRecord,
  tunnelBucketKey,
  tunnelRecord,
  tunnelsBucket,
  TUNNEL_ID_PATTERN,
  gatewayKey,
  validateTunnelEntry,
  type GatewayRecord,
  type TunnelProtocol,
  type TunnelRecord,
  tunnelsBucketSpec,
  IFNAMES_BUCKET,
  LEGACY_ENDPOINTS_BUCKET,
  MAX_CLUSTER_SIZE,
  NAMES_BUCKET,
  NODES_BUCKET,
  REGIONS_BUCKET,
  SCHEMA_VERSION,
  WORKSPACES_BUCKET,
  addressKey,
  addressRecord,
  assertDnsLabel,
  assertIfname,
  InvalidNameError,
  assertName,
  assertNodeName,
  clusterKey,
  clusterRecord,
  decodeRecord,
  endpointBucketKey,
  endpointKey,
  endpointsBucket,
  ifnameKey,
  ifnameRecord,
  locateEndpointKey,
  nameKey,
  nameRecord,
  isValidDnsLabel,
  type NameRecord,
  nodeRecord,
  parseEndpointKey,
  regionIdKey,
  regionNameKey,
  regionOfEndpointsBucket,
  regionRecord,
  validateEndpointEntry,
  workspaceIdKey,
  workspaceNameKey,
  workspaceRecord,
  type AddressRecord,
  type ClusterRecord,
  type EndpointRecord,
  type IfnameRecord,
  type InvalidReason,
  type NodeRecord,
  type RegionRecord,
  type WorkspaceRecord,
} from './schema.js';
import { EVENT_MAX_BYTES, EVENTS_STREAM, EVENTS_STREAM_MAX_AGE_MS, EVENTS_STREAM_MAX_BYTES, EVENTS_SUBJECT_PREFIX } from './events.js';

export const DEFAULT_NATS_URL = 'nats://127.0.0.1:4222';
const CONNECT_HINT = 'is nats-server running? set --nats or I6PN_NATS_URL';

// ---------------------------------------------------------------- errors

export type StoreErrorCode =
  | 'unreachable' // NATS cannot be reached
  | 'jetstream' // NATS answers but JetStream is off or refuses
  | 'invalid' // bad input (a name, an address, a number)
  | 'not-found' // unknown workspace, region, endpoint
  | 'exists' // a name or an interface is taken
  | 'conflict' // a concurrent writer changed the entry first
  | 'has-endpoints' // workspace delete without --force
  | 'exhausted' // no free random id after many draws
  | 'upgrade-pending' // migrate --finish while agents of an older version or conflicts remain
  | 'corrupt'; // an entry the command needs breaks the schema

/**
 * An error a person can act on: `what` went wrong and `hint` says what to do.
 * `message` is "<what> (<hint>)"; the CLI prints "<what> — <hint>".
 */
export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    readonly code: StoreErrorCode,
    readonly what: string,
    readonly hint: string,
  ) {
    super(`${what} (${hint})`);
  }
}

function isConflict(e: unknown): boolean {
  return (
    e instanceof JetStreamApiError &&
    (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

/** The bucket's stream is not there (stream info, keys, destroy). */
function isBucketGone(e: unknown): boolean {
  return e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamNotFound;
}

// ---------------------------------------------------------------- connection

/** Where random ids come from; tests replace parts of it to force collisions. */
export interface RandomSource {
  workspaceId(): number;
  regionId(): number;
  /** 8 bytes: bits 64..127 of an endpoint address. */
  endpointBits(): Uint8Array;
}

export const cryptoRandom: RandomSource = {
  workspaceId: randomWorkspaceId,
  regionId: randomRegionId,
  endpointBits: randomEndpointBits,
};

export interface StoreOptions {
  servers: string | string[];
  /** NATS credentials file (JWT + nkey seed). */
  creds?: string;
  /** Connection name shown by the server. */
  name?: string;
  /** Replicas of each bucket's stream when the store creates it (1, 3 or 5). */
  replicas?: number;
  /**
   * Values kept per key when the store creates a bucket (default 5). The
   * endpoints buckets keep ENDPOINTS_HISTORY whatever this says.
   */
  history?: number;
  /** Storage of a bucket the store creates (default "file"; "memory" loses it with the server). */
  storage?: 'file' | 'memory';
  /** Milliseconds to wait for the first connection (default 5000). */
  timeout?: number;
  /**
   * Milliseconds to wait for each JetStream/KV answer (default 20000). Long
   * on purpose: a loaded server answering late is not a failure; a dead one
   * is found by the connection, not by this.
   */
  requestTimeout?: number;
  /** Keep trying until the first connection succeeds (the agent), instead of failing fast (the CLI). */
  waitOnFirstConnect?: boolean;
  /** Random source for ids and addresses (default: crypto). */
  random?: Partial<RandomSource>;
}

export interface Store {
  nc: NatsConnection;
  regions: KV;
  workspaces: KV;
  addresses: KV;
  ifnames: KV;
  nodes: KV;
  names: KV;
  clusters: KV;
  /** What each tunnel gateway says of itself (GATEWAYS_BUCKET). */
  gateways: KV;
  /**
   * The tunnels bucket of a region, tunnelsBucket(region), opened on first
   * use and cached; created (history 1) for a registered region, as the
   * endpoints bucket is.
   */
  tunnels(region: string): Promise<KV>;
  /**
   * The endpoints bucket of a region, endpointsBucket(region), opened on first
   * use and cached. Absent, it is created (history ENDPOINTS_HISTORY, the
   * store's storage and replicas) for a region registered in the regions
   * bucket; for any other region that is StoreError 'not-found'.
   */
  endpoints(region: string): Promise<KV>;
  /** The regions whose endpoints bucket exists, sorted (from the server's stream names). */
  endpointRegions(): Promise<string[]>;
  /**
   * The first layout's single bucket (LEGACY_ENDPOINTS_BUCKET) while it
   * exists, else null. Looked up once per store; `recheck` asks the server again.
   */
  legacyEndpoints(opts?: { recheck?: boolean }): Promise<KV | null>;
  random: RandomSource;
  close(): Promise<void>;
}

function describeServers(servers: string | string[]): string {
  return Array.isArray(servers) ? servers.join(',') : servers;
}

function reasonOf(e: unknown): string {
  const err = e as { message?: string; code?: string; cause?: { message?: string } };
  const msg = err?.message ?? String(e);
  return err?.cause?.message && !msg.includes(err.cause.message) ? `${msg} (${err.cause.message})` : msg;
}

/**
 * Connect and open (creating on first use) the seven fixed buckets; the
 * endpoints buckets are opened per region, when first needed. Fails with a
 * StoreError whose message names the server and says what to do.
 *
 * Buckets are file-backed (or `storage`), keep `history` values per key
 * (default 5; the endpoints buckets ENDPOINTS_HISTORY) and have `replicas`
 * replicas (default 1; 3 on a NATS cluster). An existing bucket is opened as
 * it is: its settings are not changed.
 */
/**
 * The largest value a bucket the store creates takes (the streams'
 * max_msg_size): the server itself refuses anything longer, whoever writes
 * it. Records are far smaller (lib/schema.ts MAX_RECORD_BYTES).
 */
export const MAX_VALUE_BYTES = 16 * 1024;

export async function connectStore(opts: StoreOptions): Promise<Store> {
  const where = describeServers(opts.servers);
  let nc: NatsConnection;
  try {
    nc = await connectNats({
      servers: opts.servers,
      creds: opts.creds,
      name: opts.name ?? 'i6pn',
      timeout: opts.timeout ?? 5000,
      waitOnFirstConnect: opts.waitOnFirstConnect ?? false,
    });
  } catch (e) {
    if (e instanceof CredsError) throw new StoreError('invalid', e.message, 'set --creds or I6PN_NATS_CREDS to a readable .creds file');
    throw new StoreError('unreachable', `cannot reach NATS at ${where}: ${reasonOf(e)}`, CONNECT_HINT);
  }
  try {
    const requestTimeout = opts.requestTimeout ?? 20_000;
    const kvm = new Kvm(jetstream(nc, { timeout: requestTimeout }));
    const settings: BucketSettings = {
      history: opts.history ?? 5,
      replicas: opts.replicas ?? 1,
      storage: opts.storage ?? 'file',
      maxValueSize: MAX_VALUE_BYTES,
      timeout: requestTimeout,
    };
    let jsm: Promise<JetStreamManager> | null = null;
    const manager = (): Promise<JetStreamManager> => {
      jsm ??= jetstreamManager(nc, { timeout: requestTimeout }).catch((e: unknown) => {
        jsm = null;
        throw e;
      });
      return jsm;
    };
    const T = BUCKET_TABLE;
    const [[regions, workspaces, addresses, ifnames, nodes, names, clusters, gateways]] = await Promise.all([
      Promise.all([T.regions, T.workspaces, T.addresses, T.ifnames, T.nodes, T.names, T.clusters, T.gateways].map((spec) => openBucket(kvm, spec, settings))),
      manager().then((m) => ensureEventsStream(m, { replicas: settings.replicas, storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File })),
    ]);
    const random: RandomSource = { ...cryptoRandom, ...opts.random };

    // Cached per process, a failed open is forgotten so that the next call tries again.
    const cached = <T>(cache: Map<string, Promise<T>>, key: string, make: () => Promise<T>): Promise<T> => {
      let p = cache.get(key);
      if (!p) {
        p = make();
        cache.set(key, p);
        p.catch(() => cache.delete(key));
      }
      return p;
    };
    /**
     * An existing bucket, bound as it is (never created), or null. `direct`
     * false reads through the stream API, which answers "stream not found" at
     * once for a bucket deleted meanwhile (a direct get waits for its timeout).
     */
    const bindExisting = async (bucket: string, direct = true): Promise<KV | null> => {
      try {
        const si = await (await manager()).streams.info(kvStream(bucket));
        return await kvm.open(bucket, { allow_direct: direct && si.config.allow_direct === true });
      } catch (e) {
        if (isBucketGone(e)) return null;
        throw e;
      }
    };
    const endpointBuckets = new Map<string, Promise<KV>>();
    // An existing bucket is opened whatever the regions bucket says (reads of a
    // bucket made by hand still work); a new one only for a registered region.
    const openEndpoints = (region: string): Promise<KV> =>
      cached(endpointBuckets, region, async () => {
        assertNameOrInvalid('region', region);
        const existing = await bindExisting(endpointsBucket(region));
        if (existing) return existing;
        await requireRegion(store, region);
        return openBucket(kvm, endpointsBucketSpec(region), settings);
      });
    const tunnelBuckets = new Map<string, Promise<KV>>();
    const openTunnels = (region: string): Promise<KV> =>
      cached(tunnelBuckets, region, async () => {
        assertNameOrInvalid('region', region);
        const bucket = tunnelsBucket(region);
        const existing = await bindExisting(bucket);
        if (existing) return existing;
        await requireRegion(store, region);
        return openBucket(kvm, tunnelsBucketSpec(region), settings);
      });
    let legacy: Promise<KV | null> | null = null;
    const store: Store = {
      nc,
      regions: regions!,
      workspaces: workspaces!,
      addresses: addresses!,
      ifnames: ifnames!,
      nodes: nodes!,
      names: names!,
      clusters: clusters!,
      gateways: gateways!,
      tunnels: openTunnels,
      endpoints: openEndpoints,
      endpointRegions: async () => {
        const out: string[] = [];
        for await (const stream of (await manager()).streams.names()) {
          const bucket = bucketOfKvStream(stream);
          const region = bucket === null ? null : regionOfEndpointsBucket(bucket);
          if (region !== null) out.push(region);
        }
        return out.sort();
      },
      legacyEndpoints: (o = {}) => {
        if (!legacy || o.recheck) {
          // Bound, not created: a deleted legacy bucket must never come back.
          const p = bindExisting(LEGACY_ENDPOINTS_BUCKET, false);
          legacy = p;
          p.catch(() => {
            if (legacy === p) legacy = null;
          });
        }
        return legacy;
      },
      random,
      close: async () => {
        if (nc.isClosed()) return;
        // Drain flushes what is pending; a connection that cannot drain (server gone) is closed after 5 s.
        let timer: NodeJS.Timeout | undefined;
        const late = new Promise<void>((resolve) => {
          timer = setTimeout(resolve, 5000);
          timer.unref();
        });
        await Promise.race([nc.drain().catch(() => undefined), late]);
        clearTimeout(timer);
        if (!nc.isClosed()) await nc.close().catch(() => undefined);
      },
    };
    return store;
  } catch (e) {
    await nc.close().catch(() => undefined);
    const msg = reasonOf(e);
    if (/jetstream not enabled|JetStreamNotEnabled|no responders/i.test(msg) || (e as Error)?.name === 'NoRespondersError') {
      throw new StoreError(
        'jetstream',
        `NATS at ${where} has no JetStream: ${msg}`,
        'start nats-server with -js (JetStream) or point --nats at one that has it',
      );
    }
    throw new StoreError('jetstream', `cannot open the i6pn buckets on NATS at ${where}: ${msg}`, 'check the NATS account permissions and JetStream limits');
  }
}

/**
 * The stream of recent drop events (lib/events.ts: I6PN_EVENTS over
 * i6pn.events.>, an hour and 64 MiB at most, the oldest dropped first),
 * created when absent with the store's replicas and storage; an existing
 * one is left as it is. The agents publish with core NATS: the stream
 * captures what they send, and `i6pnctl observe --since/--last` reads it.
 */
/** nats-server's JSStreamNameExistErr: a stream of that name exists with other settings. */
const JS_STREAM_NAME_EXISTS = 10058;

export async function ensureEventsStream(jsm: JetStreamManager, opts: { replicas?: number; storage?: StorageType } = {}): Promise<void> {
  try {
    await jsm.streams.info(EVENTS_STREAM);
    return;
  } catch (e) {
    if (!isBucketGone(e)) throw e;
  }
  try {
    await jsm.streams.add({
      name: EVENTS_STREAM,
      description: 'i6pn drop events of every node (i6pnctl observe --since/--last)',
      subjects: [`${EVENTS_SUBJECT_PREFIX}.>`],
      retention: RetentionPolicy.Limits,
      discard: DiscardPolicy.Old,
      max_age: nanos(EVENTS_STREAM_MAX_AGE_MS),
      max_bytes: EVENTS_STREAM_MAX_BYTES,
      max_msg_size: EVENT_MAX_BYTES,
      storage: opts.storage ?? StorageType.File,
      num_replicas: opts.replicas ?? 1,
    });
  } catch (e) {
    // Another i6pnctl made it meanwhile, with other settings (the same ones are no error).
    if (!(e instanceof JetStreamApiError && e.code === JS_STREAM_NAME_EXISTS)) throw e;
  }
}

// ---------------------------------------------------------------- reading

/** `fn` over `items` with at most `limit` in flight; results in input order, as Promise.allSettled. */
async function settleLimited<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
  const out: PromiseSettledResult<R>[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      try {
        out[i] = { status: 'fulfilled', value: await fn(items[i]!, i) };
      } catch (reason) {
        out[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const enc = (v: unknown): string => JSON.stringify(v);

/**
 * An entry that breaks the schema, named as the store holds it: the real
 * bucket (for endpoints `i6pn_endpoints_<region>`, or the first layout's
 * `i6pn_endpoints`) and the key in that bucket (`<ws>.<ep>` in a region's),
 * which is what `nats kv get|del <bucket> <key>` takes to fix or remove it.
 */
export interface InvalidEntry {
  bucket: string;
  key: string;
  reason: InvalidReason;
  message: string;
}

/** A live value (not deleted) or null. */
async function getLive(kv: KV, key: string): Promise<KvEntry | null> {
  const e = await kv.get(key);
  return e && e.operation === 'PUT' ? e : null;
}

async function keysOf(kv: KV, filter: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await kv.keys(filter)) out.push(k);
  return out.sort();
}

/** Every live entry whose key matches `filter` (one NATS wildcard filter). */
async function readAll(kv: KV, filter: string): Promise<KvEntry[]> {
  const keys = await keysOf(kv, filter);
  const out: KvEntry[] = [];
  const batch = 128;
  for (let i = 0; i < keys.length; i += batch) {
    const got = await Promise.all(keys.slice(i, i + batch).map((k) => getLive(kv, k)));
    for (const e of got) if (e) out.push(e);
  }
  return out;
}

function decodeOrThrow<T>(schema: Parameters<typeof decodeRecord>[0], bucket: string, e: KvEntry): T {
  const d = decodeRecord(schema, e.value);
  if (!d.ok) {
    throw new StoreError(
      'corrupt',
      `entry ${bucket}/${e.key} is invalid (${d.reason}: ${d.message})`,
      'fix or delete it with the nats CLI; only i6pnctl should write the store',
    );
  }
  return d.record as T;
}

// ---------------------------------------------------------------- endpoint entries

/**
 * An operation on the first layout's bucket, which `migrate --finish` may
 * delete while another i6pnctl holds it open: then it did nothing and gives
 * `otherwise`. A deleted stream does not always say so (a publish to it
 * retries until its timeout, a delete reads "jetstream is not enabled"), so a
 * failure is settled by asking the server whether the bucket is still there.
 */
async function ifLegacyExists<T>(store: Store, op: () => Promise<T>, otherwise: T): Promise<T> {
  try {
    return await op();
  } catch (e) {
    if (isBucketGone(e) || (await store.legacyEndpoints({ recheck: true })) === null) return otherwise;
    throw e;
  }
}

/** Where an endpoint entry lives: the real bucket and the key in it, and the endpoint's store-wide key. */
interface EndpointRef {
  kv: KV;
  /** endpointsBucket(region), or LEGACY_ENDPOINTS_BUCKET. */
  bucket: string;
  /** The key in `bucket`: what `nats kv get BUCKET KEY` takes, and what InvalidEntry.key says. */
  key: string;
  /** `<region>.<workspace id>.<endpoint id>` (endpointKey): what claims point at and validateEndpointEntry takes. */
  logical: string;
}

interface EndpointAt extends EndpointRef {
  entry: KvEntry;
}

/** A selection of endpoint keys: one region or every one, one workspace id (8 hex) or every one, one endpoint id (16 hex) or every one. */
interface EndpointSelection {
  region?: string;
  workspace?: string;
  endpoint?: string;
}

/** One NATS filter for the selected keys (`>` selecting everything, so that a malformed key written by hand is read, and reported, too). */
function selectionFilter(tokens: (string | undefined)[]): string {
  return tokens.every((t) => t === undefined) ? '>' : tokens.map((t) => t ?? '*').join('.');
}

/**
 * The keys of the selected endpoints: those of the region buckets (one, or
 * every one that exists), then, while the first layout's bucket exists, its
 * keys that no region bucket holds (the union of the layouts during an upgrade).
 */
async function endpointRefs(store: Store, sel: EndpointSelection): Promise<EndpointRef[]> {
  const regions = sel.region !== undefined ? [sel.region] : await store.endpointRegions();
  const filter = selectionFilter([sel.workspace, sel.endpoint]);
  const perRegion = await settleLimited(regions, 8, async (region) => {
    const kv = await store.endpoints(region);
    const bucket = endpointsBucket(region);
    return (await keysOf(kv, filter)).map((key): EndpointRef => ({ kv, bucket, key, logical: `${region}.${key}` }));
  });
  const refs: EndpointRef[] = [];
  for (const r of perRegion) {
    if (r.status === 'rejected') throw r.reason;
    refs.push(...r.value);
  }
  const legacy = await store.legacyEndpoints();
  if (legacy) {
    const seen = new Set(refs.map((r) => r.logical));
    for (const key of await ifLegacyExists(store, () => keysOf(legacy, selectionFilter([sel.region, sel.workspace, sel.endpoint])), [])) {
      if (!seen.has(key)) refs.push({ kv: legacy, bucket: LEGACY_ENDPOINTS_BUCKET, key, logical: key });
    }
  }
  return refs;
}

/** The live entries of the selected endpoints (endpointRefs), read 128 at a time. */
async function endpointEntries(store: Store, sel: EndpointSelection): Promise<EndpointAt[]> {
  const refs = await endpointRefs(store, sel);
  const out: EndpointAt[] = [];
  for (let i = 0; i < refs.length; i += 128) {
    const got = await Promise.all(
      refs.slice(i, i + 128).map(async (r) => {
        const entry = await (r.bucket === LEGACY_ENDPOINTS_BUCKET ? ifLegacyExists(store, () => getLive(r.kv, r.key), null) : getLive(r.kv, r.key));
        return entry ? { ...r, entry } : null;
      }),
    );
    for (const e of got) if (e) out.push(e);
  }
  return out;
}

type ValidEndpoint = { at: EndpointAt; record: EndpointRecord; addr: Uint8Array };

/** Entries as the agents judge them; an invalid one is reported by its real bucket and key. */
/**
 * The entries as the agents judge them: validateEndpointEntry, and the
 * record's region id the one its region has in the regions bucket (an entry
 * of region R carrying another region's id, address bits and all, is
 * consistent in itself, but no agent of R applies it: reason region).
 */
async function validateEndpoints(store: Pick<Store, 'regions'>, entries: EndpointAt[]): Promise<{ valid: ValidEndpoint[]; invalid: InvalidEntry[] }> {
  const valid: ValidEndpoint[] = [];
  const invalid: InvalidEntry[] = [];
  const regionIds = entries.length ? new Map((await listRegions(store)).regions.map((r) => [r.name, r.id])) : new Map<string, number>();
  for (const at of entries) {
    const v = validateEndpointEntry(at.logical, at.entry.value);
    if (!v.ok) invalid.push({ bucket: at.bucket, key: at.key, reason: v.reason, message: v.message });
    else if (regionIds.get(v.record.region) !== v.record.regionId) {
      invalid.push({ bucket: at.bucket, key: at.key, reason: 'region', message: `region ${v.record.region} has id ${regionIds.has(v.record.region) ? regionIdHex(regionIds.get(v.record.region)!) : '(none: not registered)'}, the record says ${regionIdHex(v.record.regionId)}` });
    } else valid.push({ at, record: v.record, addr: v.addr });
  }
  return { valid, invalid };
}

/** One endpoint's entries: in its region's bucket (`current`) and, while it exists, in the first layout's (`legacy`). */
interface FoundEndpoint {
  logical: string;
  /** Its place in its region's bucket; null for a key that names no region. */
  place: { kv: KV; bucket: string; key: string } | null;
  current: EndpointAt | null;
  legacy: EndpointAt | null;
}

async function findEndpoint(store: Store, logical: string): Promise<FoundEndpoint> {
  const loc = locateEndpointKey(logical);
  const legacyKv = await store.legacyEndpoints();
  const legacyEntry = legacyKv ? await ifLegacyExists(store, () => getLive(legacyKv, logical), null) : null;
  const legacy = legacyKv && legacyEntry ? { kv: legacyKv, bucket: LEGACY_ENDPOINTS_BUCKET, key: logical, logical, entry: legacyEntry } : null;
  if (!loc) return { logical, place: null, current: null, legacy };
  const kv = await store.endpoints(loc.region);
  const place = { kv, bucket: loc.bucket, key: loc.key };
  const entry = await getLive(kv, loc.key);
  return { logical, place, current: entry ? { ...place, logical, entry } : null, legacy };
}

/**
 * Delete what `found` holds. The first layout's entry goes first, then the
 * region bucket's is read again and deleted: `migrate` copies an entry and
 * then checks that it is still in the old bucket, so whichever of the two
 * comes second sees the other's work and a removed endpoint is never copied
 * back. A changed entry (compare-and-set) is StoreError 'conflict'.
 */
async function deleteEndpointEntries(store: Store, found: FoundEndpoint, what: string): Promise<void> {
  const changed = (): StoreError => new StoreError('conflict', `endpoint ${what} changed while it was being removed`, 'run the command again');
  const legacy = found.legacy;
  if (legacy) {
    try {
      await ifLegacyExists(store, () => legacy.kv.delete(legacy.key, { previousSeq: legacy.entry.revision }), undefined);
    } catch (e) {
      if (isConflict(e)) throw changed();
      throw e;
    }
  }
  if (!found.place) return;
  const now = found.legacy ? await getLive(found.place.kv, found.place.key) : found.current?.entry ?? null;
  if (!now) return;
  try {
    await found.place.kv.delete(found.place.key, { previousSeq: now.revision });
  } catch (e) {
    if (isConflict(e)) throw changed();
    throw e;
  }
}

// ---------------------------------------------------------------- regions

export async function getRegion(store: Pick<Store, 'regions'>, name: string): Promise<RegionRecord | null> {
  assertNameOrInvalid('region', name);
  const e = await getLive(store.regions, regionNameKey(name));
  return e ? decodeOrThrow<RegionRecord>(regionRecord, REGIONS_BUCKET, e) : null;
}

async function requireRegion(store: Store, name: string): Promise<RegionRecord> {
  const r = await getRegion(store, name);
  if (!r) throw new StoreError('not-found', `unknown region ${JSON.stringify(name)}`, 'list regions with `i6pnctl region list` or add it with `i6pnctl region add NAME`');
  return r;
}

/**
 * Register a region under a new 16-bit id (random unless `id` is given). The
 * id key is claimed first, then the name key; a taken name releases the id.
 */
export async function addRegion(store: Store, name: string, opts: { id?: number } = {}): Promise<RegionRecord> {
  assertNameOrInvalid('region', name);
  if (opts.id !== undefined && !isRegionId(opts.id)) {
    throw new StoreError('invalid', `invalid region id ${opts.id}`, 'use a number from 1 to 65535');
  }
  const tries = opts.id === undefined ? 64 : 1;
  for (let i = 0; i < tries; i++) {
    const id = opts.id ?? store.random.regionId();
    const record = regionRecord.parse({ v: SCHEMA_VERSION, name, id });
    let idRevision: number;
    try {
      idRevision = await store.regions.create(regionIdKey(id), enc(record));
    } catch (e) {
      if (!isConflict(e)) throw e;
      if (opts.id !== undefined) {
        const other = await getLive(store.regions, regionIdKey(id));
        const d = other ? decodeRecord(regionRecord, other.value) : null;
        const owner = d?.ok ? d.record.name : undefined;
        throw new StoreError('exists', `region id ${id} (0x${regionIdHex(id)}) is taken${owner ? ` by region ${JSON.stringify(owner)}` : ''}`, 'choose another --id or leave it out for a random one');
      }
      continue; // random id taken: draw again
    }
    try {
      await store.regions.create(regionNameKey(name), enc(record));
    } catch (e) {
      // The id was never published under a name: give it back.
      await store.regions.delete(regionIdKey(id), { previousSeq: idRevision }).catch(() => undefined);
      if (isConflict(e)) throw new StoreError('exists', `region ${JSON.stringify(name)} already exists`, 'choose another name; `i6pnctl region list` shows the taken ones');
      throw e;
    }
    // Its endpoints and tunnels buckets, now: the region's agents and gateways read them from the start.
    try {
      await store.endpoints(name);
      await store.tunnels(name);
    } catch (e) {
      throw new StoreError(
        'jetstream',
        `region ${name} is added (id 0x${regionIdHex(id)}) but its bucket ${endpointsBucket(name)} could not be created: ${reasonOf(e)}`,
        'check the NATS account\'s JetStream limits; the next command that writes an endpoint of this region creates it',
      );
    }
    return record;
  }
  throw new StoreError('exhausted', 'no free region id after 64 random draws', 'the 16-bit region space is nearly full; pass --id');
}

export async function listRegions(store: Pick<Store, 'regions'>): Promise<{ regions: RegionRecord[]; invalid: InvalidEntry[] }> {
  const regions: RegionRecord[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.regions, 'name.*')) {
    const d = decodeRecord(regionRecord, e.value);
    if (!d.ok) invalid.push({ bucket: REGIONS_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else if (regionNameKey(d.record.name) !== e.key) invalid.push({ bucket: REGIONS_BUCKET, key: e.key, reason: 'key', message: `key does not match the record's name ${JSON.stringify(d.record.name)}` });
    else regions.push(d.record);
  }
  return { regions: regions.sort((a, b) => a.name.localeCompare(b.name)), invalid };
}

// ---------------------------------------------------------------- workspaces

function assertNameOrInvalid(kind: 'region' | 'workspace', name: string): void {
  try {
    assertName(kind, name);
  } catch (e) {
    throw invalidInput(e);
  }
}

export async function getWorkspace(store: Store, name: string): Promise<{ record: WorkspaceRecord; revision: number } | null> {
  assertNameOrInvalid('workspace', name);
  const e = await getLive(store.workspaces, workspaceNameKey(name));
  return e ? { record: decodeOrThrow<WorkspaceRecord>(workspaceRecord, WORKSPACES_BUCKET, e), revision: e.revision } : null;
}

async function requireWorkspace(store: Store, name: string): Promise<{ record: WorkspaceRecord; revision: number }> {
  const w = await getWorkspace(store, name);
  if (!w) throw new StoreError('not-found', `unknown workspace ${JSON.stringify(name)}`, 'list workspaces with `i6pnctl workspace list` or create it with `i6pnctl workspace create NAME`');
  return w;
}

/**
 * Create a workspace with a fresh random id. The id key is claimed first
 * (drawn again while taken), then the name key. When the name is taken the id
 * key is marked deleted, so the id stays burnt and is never reused.
 */
export async function createWorkspace(store: Store, name: string): Promise<WorkspaceRecord> {
  assertNameOrInvalid('workspace', name);
  if (name === INFRA_WORKSPACE_NAME) {
    throw new StoreError('invalid', `workspace name ${JSON.stringify(name)} is reserved (the tunnel gateways' workspace 0)`, 'choose another name');
  }
  const tries = 64;
  for (let i = 0; i < tries; i++) {
    const id = store.random.workspaceId();
    const record = workspaceRecord.parse({
      v: SCHEMA_VERSION,
      name,
      id,
      subnet: workspaceSubnet(id),
      createdAt: new Date().toISOString(),
    });
    let idRevision: number;
    try {
      idRevision = await store.workspaces.create(workspaceIdKey(id), enc(record));
    } catch (e) {
      if (isConflict(e)) continue; // random id taken (live or deleted): draw again
      throw e;
    }
    try {
      await store.workspaces.create(workspaceNameKey(name), enc(record));
    } catch (e) {
      const burnt: WorkspaceRecord = { ...record, deletedAt: new Date().toISOString() };
      await store.workspaces.update(workspaceIdKey(id), enc(burnt), idRevision).catch(() => undefined);
      if (isConflict(e)) throw new StoreError('exists', `workspace ${JSON.stringify(name)} already exists`, 'choose another name; `i6pnctl workspace list` shows the taken ones');
      throw e;
    }
    return record;
  }
  throw new StoreError('exhausted', `no free workspace id after ${tries} random draws`, 'check the random source; the 32-bit space cannot be full');
}

export async function listWorkspaces(store: Store): Promise<{ workspaces: WorkspaceRecord[]; invalid: InvalidEntry[] }> {
  const workspaces: WorkspaceRecord[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.workspaces, 'name.*')) {
    const d = decodeRecord(workspaceRecord, e.value);
    if (!d.ok) invalid.push({ bucket: WORKSPACES_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else if (workspaceNameKey(d.record.name) !== e.key) invalid.push({ bucket: WORKSPACES_BUCKET, key: e.key, reason: 'key', message: `key does not match the record's name ${JSON.stringify(d.record.name)}` });
    else workspaces.push(d.record);
  }
  return { workspaces: workspaces.sort((a, b) => a.name.localeCompare(b.name)), invalid };
}

/**
 * Delete a workspace: its endpoints are removed first (refused while it has
 * any, unless `force`), then its name key is deleted (compare-and-set) and its
 * id key marked `deletedAt`, then endpoints are swept once more to catch one
 * registered concurrently, and its named clusters are deleted. The name can
 * be used again; the id cannot.
 */
export async function deleteWorkspace(
  store: Store,
  name: string,
  opts: { force?: boolean } = {},
): Promise<{ workspace: WorkspaceRecord; removedEndpoints: EndpointRecord[] }> {
  const { record, revision } = await requireWorkspace(store, name);
  const selection = { workspace: workspaceIdHex(record.id) };
  const before = await endpointRefs(store, selection);
  if (before.length > 0 && !opts.force) {
    throw new StoreError(
      'has-endpoints',
      `workspace ${JSON.stringify(name)} still has ${before.length} endpoint${before.length === 1 ? '' : 's'}`,
      'remove them with `i6pnctl endpoint remove ADDRESS`, or pass --force to remove them with the workspace',
    );
  }
  const removed: EndpointRecord[] = [];
  const sweep = async (): Promise<void> => {
    const keys = (await endpointRefs(store, selection)).map((r) => r.logical);
    for (let i = 0; i < keys.length; i += 64) {
      const done = await Promise.all(keys.slice(i, i + 64).map((k) => removeEndpointByKey(store, k).catch(() => null)));
      for (const r of done) if (r) removed.push(r);
    }
  };
  await sweep();
  try {
    await store.workspaces.delete(workspaceNameKey(name), { previousSeq: revision });
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `workspace ${JSON.stringify(name)} changed while it was being deleted`, 'run the command again');
    throw e;
  }
  const deletedAt = new Date().toISOString();
  for (let i = 0; i < 8; i++) {
    const idEntry = await store.workspaces.get(workspaceIdKey(record.id));
    const current = idEntry && idEntry.operation === 'PUT' ? decodeRecord(workspaceRecord, idEntry.value) : null;
    const base = current?.ok ? current.record : record;
    try {
      const tomb = enc({ ...base, deletedAt });
      if (idEntry) await store.workspaces.update(workspaceIdKey(record.id), tomb, idEntry.revision);
      else await store.workspaces.create(workspaceIdKey(record.id), tomb);
      break;
    } catch (e) {
      if (!isConflict(e)) throw e;
    }
  }
  await sweep();
  // Its named clusters (their members went with the sweep).
  for (const e of await readAll(store.clusters, `*.${workspaceIdHex(record.id)}.*`)) {
    await store.clusters.delete(e.key, { previousSeq: e.revision }).catch(() => undefined);
  }
  return { workspace: { ...record, deletedAt }, removedEndpoints: removed };
}

// ---------------------------------------------------------------- endpoints

export interface EndpointSpec {
  workspace: string;
  region: string;
  node: string;
  /** Host-side interface name, or a rule that derives it from the address. */
  ifname: string | ((address: Uint8Array) => string);
  /** Default true. */
  i6pn?: boolean;
  /** Its DNS name, unique in its workspace and region. */
  name?: string;
}

/** A member's place in a named cluster (createCluster sets it). */
interface Membership {
  cluster: string;
  rank: number;
}

/**
 * The interface name `cluster create` gives each endpoint: "i6p" and the last
 * 12 hex digits of the endpoint id (15 characters, the Linux maximum). Random,
 * so unique per node in practice; the ifnames bucket catches the rare clash
 * and the endpoint then gets another address.
 */
export function clusterIfname(address: Uint8Array): string {
  return `i6p${endpointIdOf(address).slice(4)}`;
}

function invalidInput(e: unknown): StoreError {
  if (e instanceof InvalidNameError) return new StoreError('invalid', e.what, `use ${e.rule}`);
  return new StoreError('invalid', (e as Error).message, 'see --help');
}

type Resolved = { workspace: Pick<WorkspaceRecord, 'name' | 'id'>; region: RegionRecord };

async function resolve(store: Store, workspace: string, region: string): Promise<Resolved> {
  assertNameOrInvalid('workspace', workspace);
  assertNameOrInvalid('region', region);
  const [w, r] = await Promise.all([requireWorkspace(store, workspace), requireRegion(store, region)]);
  return { workspace: w.record, region: r };
}

/** Steps 1–3 of registration (with the name's claim), each undone if a later one fails. */
async function register(store: Store, at: Resolved, spec: EndpointSpec, member?: Membership): Promise<EndpointRecord> {
  try {
    assertNodeName(spec.node);
    if (typeof spec.ifname === 'string') assertIfname(spec.ifname);
    if (spec.name !== undefined) assertDnsLabel('endpoint', spec.name);
  } catch (e) {
    throw invalidInput(e);
  }
  const endpoints = await store.endpoints(at.region.name);
  const tries = 16;
  for (let i = 0; i < tries; i++) {
    const gateway = at.workspace.id === INFRA_WORKSPACE_ID;
    const addr = gateway ? makeGatewayAddress(at.region.id, store.random.endpointBits().subarray(2)) : makeEndpointAddress(at.workspace.id, at.region.id, store.random.endpointBits());
    const ifname = typeof spec.ifname === 'string' ? spec.ifname : spec.ifname(addr);
    const record: EndpointRecord = {
      v: SCHEMA_VERSION,
      address: formatAddress(addr),
      workspace: at.workspace.name,
      workspaceId: at.workspace.id,
      region: at.region.name,
      regionId: at.region.id,
      node: spec.node,
      ifname,
      i6pn: spec.i6pn ?? true,
      createdAt: new Date().toISOString(),
      ...(spec.name !== undefined ? { name: spec.name } : {}),
      ...(member ? { cluster: member.cluster, rank: member.rank } : {}),
      ...(gateway ? { role: GATEWAY_ROLE } : {}),
    };
    const key = endpointKey(record);
    // The same check the agent applies on read.
    const check = validateEndpointEntry(key, record);
    if (!check.ok) throw new StoreError('invalid', `endpoint would be invalid (${check.reason}: ${check.message})`, 'check the flags');

    // 1. The address: created once, never deleted.
    const addrRecord = addressRecord.parse({ v: SCHEMA_VERSION, address: record.address, endpointKey: key, state: 'active', createdAt: record.createdAt });
    let addrRevision: number;
    try {
      addrRevision = await store.addresses.create(addressKey(addr), enc(addrRecord));
    } catch (e) {
      if (isConflict(e)) continue; // handed out before (live or removed): draw again
      throw e;
    }
    const burnAddress = async (): Promise<void> => {
      const removed: AddressRecord = { ...addrRecord, state: 'removed', removedAt: new Date().toISOString() };
      await store.addresses.update(addressKey(addr), enc(removed), addrRevision).catch(() => undefined);
    };

    // 2. The interface name on its node.
    const ifRecord = ifnameRecord.parse({ v: SCHEMA_VERSION, node: spec.node, ifname, address: record.address, endpointKey: key, createdAt: record.createdAt });
    let ifRevision: number;
    try {
      ifRevision = await store.ifnames.create(ifnameKey(spec.node, ifname), enc(ifRecord));
    } catch (e) {
      await burnAddress();
      if (isConflict(e)) {
        if (typeof spec.ifname !== 'string') continue; // derived name clashed: new address, new name
        const other = await getLive(store.ifnames, ifnameKey(spec.node, ifname));
        const d = other ? decodeRecord(ifnameRecord, other.value) : null;
        throw new StoreError(
          'exists',
          `interface ${ifname} on node ${spec.node} is already used${d?.ok ? ` by endpoint ${d.record.address}` : ''}`,
          'choose another --ifname, or remove that endpoint first',
        );
      }
      throw e;
    }

    // 2b. Its name in its workspace and region.
    let release = async (): Promise<void> => {
      await store.ifnames.delete(ifnameKey(spec.node, ifname), { previousSeq: ifRevision }).catch(() => undefined);
      await burnAddress();
    };
    if (record.name !== undefined) {
      const nameRevision = await claimName(store, record, key).catch(async (e: unknown) => {
        await release();
        throw e;
      });
      const releaseIfname = release;
      release = async () => {
        await store.names.delete(nameKey(record.region, record.workspaceId, record.name!), { previousSeq: nameRevision }).catch(() => undefined);
        await releaseIfname();
      };
    }

    // 3. The endpoint itself, in its region's bucket: what agents apply. While
    // the first layout's bucket exists, there too, for agents not yet upgraded.
    const value = enc(record);
    const bucketKey = endpointBucketKey(record);
    let epRevision: number | null = null;
    try {
      epRevision = await endpoints.create(bucketKey, value);
      const legacy = await store.legacyEndpoints();
      // put with previousSeq 0 is create without kv.create's second try, whose read of a deleted bucket would wait for its timeout.
      if (legacy) await ifLegacyExists(store, () => legacy.put(key, value, { previousSeq: 0 }), 0);
    } catch (e) {
      if (epRevision !== null) await endpoints.delete(bucketKey, { previousSeq: epRevision }).catch(() => undefined);
      await release();
      throw e;
    }
    return record;
  }
  throw new StoreError('exhausted', `no free address in ${workspaceSubnet(at.workspace.id)} region ${at.region.name} after ${tries} random draws`, 'check the random source; 64 random bits cannot run out');
}

/**
 * Claim an endpoint's name in its workspace and region (create-if-absent);
 * returns the claim's revision. A taken name is StoreError 'exists', naming
 * the endpoint that holds it.
 */
async function claimName(store: Store, record: EndpointRecord, key: string): Promise<number> {
  const name = record.name!;
  const claim = nameRecord.parse({ v: SCHEMA_VERSION, name, region: record.region, workspaceId: record.workspaceId, address: record.address, endpointKey: key, createdAt: new Date().toISOString() });
  const k = nameKey(record.region, record.workspaceId, name);
  try {
    return await store.names.create(k, enc(claim));
  } catch (e) {
    if (!isConflict(e)) throw e;
    const other = await getLive(store.names, k);
    const d = other ? decodeRecord(nameRecord, other.value) : null;
    throw new StoreError(
      'exists',
      `name ${JSON.stringify(name)} is taken in workspace ${record.workspace} region ${record.region}${d?.ok ? ` by endpoint ${d.record.address}` : ''}`,
      'choose another --name; names are unique per workspace and region',
    );
  }
}

/** Release a name claim if it still points at `key` (compare-and-set). */
async function releaseName(store: Store, record: Pick<EndpointRecord, 'region' | 'workspaceId'>, name: string, key: string): Promise<void> {
  const k = nameKey(record.region, record.workspaceId, name);
  const claim = await getLive(store.names, k);
  if (!claim) return;
  const d = decodeRecord(nameRecord, claim.value);
  if (d.ok && d.record.endpointKey === key) await store.names.delete(k, { previousSeq: claim.revision }).catch(() => undefined);
}

/** Step 4: the workspace must still be the one resolved, or the endpoints are undone. */
async function confirmWorkspace(store: Store, at: Resolved, records: EndpointRecord[]): Promise<void> {
  const now = await getLive(store.workspaces, workspaceNameKey(at.workspace.name));
  const d = now ? decodeRecord(workspaceRecord, now.value) : null;
  if (d?.ok && d.record.id === at.workspace.id) return;
  await Promise.all(records.map((r) => removeEndpointByKey(store, endpointKey(r)).catch(() => undefined)));
  throw new StoreError('not-found', `workspace ${JSON.stringify(at.workspace.name)} was deleted while the endpoint was being added`, 'create the workspace again and retry');
}

/** Register one endpoint; its address is new, unique and never reused. */
export async function addEndpoint(store: Store, spec: EndpointSpec): Promise<EndpointRecord> {
  const at = await resolve(store, spec.workspace, spec.region);
  const record = await register(store, at, spec);
  await confirmWorkspace(store, at, [record]);
  return record;
}

/**
 * Register `size` endpoints of one workspace in one region, placed round-robin
 * over `nodes`, with interface names from `clusterIfname`. All or nothing: if
 * one fails, those already registered are removed. With `name`, the cluster
 * is a named object: its record is claimed first in the clusters bucket
 * (unique per workspace and region), and member i records the cluster and
 * rank i (placement order). Returns the members in rank order.
 */
export async function createCluster(
  store: Store,
  opts: { workspace: string; region: string; size: number; nodes: string[]; i6pn?: boolean; name?: string },
): Promise<EndpointRecord[]> {
  if (!Number.isInteger(opts.size) || opts.size < 1 || opts.size > MAX_CLUSTER_SIZE) {
    throw new StoreError('invalid', `invalid cluster size ${opts.size}`, `use --size with a whole number from 1 to ${MAX_CLUSTER_SIZE}`);
  }
  if (opts.nodes.length === 0) throw new StoreError('invalid', 'no nodes to place the cluster on', 'pass --nodes a,b,c');
  try {
    for (const n of opts.nodes) assertNodeName(n);
    if (opts.name !== undefined) assertDnsLabel('cluster', opts.name);
  } catch (e) {
    throw invalidInput(e);
  }
  const at = await resolve(store, opts.workspace, opts.region);
  let claim: { key: string; revision: number } | null = null;
  if (opts.name !== undefined) {
    const record = clusterRecord.parse({
      v: SCHEMA_VERSION,
      name: opts.name,
      workspace: at.workspace.name,
      workspaceId: at.workspace.id,
      region: at.region.name,
      regionId: at.region.id,
      size: opts.size,
      createdAt: new Date().toISOString(),
    });
    const key = clusterKey(at.region.name, at.workspace.id, opts.name);
    try {
      claim = { key, revision: await store.clusters.create(key, enc(record)) };
    } catch (e) {
      if (isConflict(e)) {
        throw new StoreError('exists', `cluster ${JSON.stringify(opts.name)} already exists in workspace ${at.workspace.name} region ${at.region.name}`, 'choose another --name; `i6pnctl cluster list` shows the taken ones');
      }
      throw e;
    }
  }
  const member = (i: number): Membership | undefined => (opts.name !== undefined ? { cluster: opts.name, rank: i } : undefined);
  // Bounded, so that a 10000-endpoint cluster does not flood the server.
  const settled = await settleLimited(Array.from({ length: opts.size }, (_, i) => i), 64, (i) =>
    register(store, at, { workspace: opts.workspace, region: opts.region, node: opts.nodes[i % opts.nodes.length]!, ifname: clusterIfname, i6pn: opts.i6pn ?? true }, member(i)),
  );
  const ok = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  const undoClaim = async (): Promise<void> => {
    if (claim) await store.clusters.delete(claim.key, { previousSeq: claim.revision }).catch(() => undefined);
  };
  if (failed) {
    await Promise.all(ok.map((r) => removeEndpointByKey(store, endpointKey(r)).catch(() => undefined)));
    await undoClaim();
    throw failed.reason;
  }
  try {
    await confirmWorkspace(store, at, ok);
  } catch (e) {
    await undoClaim();
    throw e;
  }
  return ok;
}

export interface ClusterRef {
  workspace: string;
  region: string;
  name: string;
}

/** A named cluster's record and its revision; StoreError 'not-found' when there is none. */
async function requireCluster(store: Store, ref: ClusterRef): Promise<{ at: Resolved; record: ClusterRecord; revision: number }> {
  try {
    assertDnsLabel('cluster', ref.name);
  } catch (e) {
    throw invalidInput(e);
  }
  const at = await resolve(store, ref.workspace, ref.region);
  const e = await getLive(store.clusters, clusterKey(at.region.name, at.workspace.id, ref.name));
  if (!e) {
    throw new StoreError('not-found', `no cluster ${JSON.stringify(ref.name)} in workspace ${ref.workspace} region ${ref.region}`, 'list clusters with `i6pnctl cluster list`');
  }
  return { at, record: decodeOrThrow<ClusterRecord>(clusterRecord, CLUSTERS_BUCKET, e), revision: e.revision };
}

/** The live members of a named cluster, by rank (then address, should two ever share one). */
async function clusterMembers(store: Store, at: Resolved, name: string): Promise<{ members: ValidEndpoint[]; invalid: InvalidEntry[] }> {
  const { valid, invalid } = await validateEndpoints(store, await endpointEntries(store, { region: at.region.name, workspace: workspaceIdHex(at.workspace.id) }));
  const members = valid.filter((v) => v.record.cluster === name && v.record.workspaceId === at.workspace.id);
  members.sort((a, b) => a.record.rank! - b.record.rank! || a.record.address.localeCompare(b.record.address));
  return { members, invalid };
}

/** `cluster show`: the cluster and its live members by rank. */
export async function showCluster(store: Store, ref: ClusterRef): Promise<{ cluster: ClusterRecord; members: EndpointRecord[]; invalid: InvalidEntry[] }> {
  const { at, record } = await requireCluster(store, ref);
  const { members, invalid } = await clusterMembers(store, at, ref.name);
  return { cluster: record, members: members.map((m) => m.record), invalid };
}

/** Named clusters, optionally of one workspace and/or region, by region, workspace and name. */
export async function listClusters(store: Store, filter: { workspace?: string; region?: string } = {}): Promise<{ clusters: ClusterRecord[]; invalid: InvalidEntry[] }> {
  let ws = '*';
  if (filter.workspace !== undefined) ws = workspaceIdHex((await requireWorkspace(store, filter.workspace)).record.id);
  if (filter.region !== undefined) await requireRegion(store, filter.region);
  const clusters: ClusterRecord[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.clusters, `${filter.region ?? '*'}.${ws}.*`)) {
    const d = decodeRecord(clusterRecord, e.value);
    if (!d.ok) invalid.push({ bucket: CLUSTERS_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else if (clusterKey(d.record.region, d.record.workspaceId, d.record.name) !== e.key) invalid.push({ bucket: CLUSTERS_BUCKET, key: e.key, reason: 'key', message: 'key does not match the record' });
    else clusters.push(d.record);
  }
  clusters.sort((a, b) => a.region.localeCompare(b.region) || a.workspace.localeCompare(b.workspace) || a.name.localeCompare(b.name));
  return { clusters, invalid };
}

/** Names and ranks change only in the per-region layout: refused while the first layout's bucket exists. */
async function requireRegionLayout(store: Store, what: string): Promise<void> {
  if (await store.legacyEndpoints({ recheck: true })) {
    throw new StoreError('upgrade-pending', `${what} needs the per-region layout, and ${LEGACY_ENDPOINTS_BUCKET} still exists`, 'finish the upgrade first: i6pnctl migrate --finish');
  }
}

/** Rewrite a live endpoint entry (compare-and-set on the revision read); a change in between is StoreError 'conflict'. */
async function rewriteEndpoint(store: Store, at: EndpointAt, record: EndpointRecord): Promise<void> {
  const check = validateEndpointEntry(at.logical, record);
  if (!check.ok) throw new StoreError('invalid', `endpoint would be invalid (${check.reason}: ${check.message})`, 'check the arguments');
  try {
    await at.kv.update(at.key, enc(record), at.entry.revision);
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `endpoint ${record.address} changed meanwhile`, 'run the command again');
    throw e;
  }
}

/**
 * Swap the members at two ranks of a named cluster (either rank may be
 * empty: the other member moves). The cluster record is updated first
 * (compare-and-set), which orders concurrent swaps; then each member's entry
 * (compare-and-set), the first undone if the second fails. Agents may see
 * the two entries change a moment apart. Returns the members by rank.
 */
export async function swapClusterRanks(store: Store, ref: ClusterRef, a: number, b: number): Promise<EndpointRecord[]> {
  await requireRegionLayout(store, 'changing ranks');
  const { at, record, revision } = await requireCluster(store, ref);
  for (const r of [a, b]) {
    if (!Number.isInteger(r) || r < 0 || r >= record.size) throw new StoreError('invalid', `rank ${r} is not in cluster ${ref.name} (ranks 0 to ${record.size - 1})`, 'pass two ranks of the cluster');
  }
  if (a === b) throw new StoreError('invalid', `ranks ${a} and ${b} are the same`, 'pass two different ranks');
  try {
    await store.clusters.update(clusterKey(at.region.name, at.workspace.id, ref.name), enc({ ...record, updatedAt: new Date().toISOString() }), revision);
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `cluster ${ref.name} changed meanwhile`, 'run the command again');
    throw e;
  }
  const { members } = await clusterMembers(store, at, ref.name);
  const moves = members.filter((m) => m.record.rank === a || m.record.rank === b);
  if (moves.length === 0) throw new StoreError('not-found', `cluster ${ref.name} has no live member at rank ${a} or ${b}`, 'see `i6pnctl cluster show`');
  const done: { at: EndpointAt; record: EndpointRecord }[] = [];
  for (const m of moves) {
    const moved = { ...m.record, rank: m.record.rank === a ? b : a };
    try {
      await rewriteEndpoint(store, m.at, moved);
    } catch (e) {
      for (const d of done) {
        const now = await getLive(d.at.kv, d.at.key);
        if (now) await rewriteEndpoint(store, { ...d.at, entry: now }, d.record).catch(() => undefined);
      }
      throw e;
    }
    done.push({ at: m.at, record: m.record });
  }
  return (await clusterMembers(store, at, ref.name)).members.map((m) => m.record);
}

/** Remove a named cluster: its live members (as `endpoint remove` does), then its record. */
export async function deleteCluster(store: Store, ref: ClusterRef): Promise<{ cluster: ClusterRecord; removedEndpoints: EndpointRecord[] }> {
  const { at, record } = await requireCluster(store, ref);
  const removed: EndpointRecord[] = [];
  const { members } = await clusterMembers(store, at, ref.name);
  for (let i = 0; i < members.length; i += 64) {
    const done = await Promise.all(members.slice(i, i + 64).map((m) => removeEndpointByKey(store, m.at.logical).catch(() => null)));
    for (const r of done) if (r) removed.push(r);
  }
  const now = await getLive(store.clusters, clusterKey(at.region.name, at.workspace.id, ref.name));
  if (now) await store.clusters.delete(now.key, { previousSeq: now.revision }).catch(() => undefined);
  return { cluster: record, removedEndpoints: removed };
}

/**
 * Give an endpoint a name, another name, or none (`null`). The new name is
 * claimed first (create-if-absent), then the entry is rewritten
 * (compare-and-set), then the old name's claim is released; a failed step
 * undoes the claim. Returns the endpoint as it is now.
 */
export async function renameEndpoint(store: Store, address: string, name: string | null): Promise<EndpointRecord> {
  if (name !== null) {
    try {
      assertDnsLabel('endpoint', name);
    } catch (e) {
      throw invalidInput(e);
    }
  }
  await requireRegionLayout(store, 'renaming an endpoint');
  const { key, addr, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') throw new StoreError('not-found', `endpoint ${formatAddress(addr)} was removed`, 'list live endpoints with `i6pnctl endpoint list`');
  const found = await findEndpoint(store, key);
  if (!found.current) throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)}`, 'list endpoints with `i6pnctl endpoint list`');
  const v = validateEndpointEntry(key, found.current.entry.value);
  if (!v.ok) throw new StoreError('corrupt', `entry ${found.current.bucket}/${found.current.key} is invalid (${v.reason}: ${v.message})`, 'fix or delete it with the nats CLI; only i6pnctl should write the store');
  const old = v.record;
  if ((old.name ?? null) === name) return old;
  const { name: _dropped, ...rest } = old;
  const next: EndpointRecord = name === null ? rest : { ...rest, name };
  let claimed: number | null = null;
  if (name !== null) claimed = await claimName(store, next, key);
  try {
    await rewriteEndpoint(store, found.current, next);
  } catch (e) {
    if (claimed !== null) await store.names.delete(nameKey(next.region, next.workspaceId, name!), { previousSeq: claimed }).catch(() => undefined);
    throw e;
  }
  if (old.name !== undefined) await releaseName(store, old, old.name, key);
  return next;
}

function parseAddressArg(address: string): Uint8Array {
  let addr: Uint8Array;
  try {
    addr = parseAddress(address);
  } catch (e) {
    throw new StoreError('invalid', (e as Error).message, 'pass an endpoint address such as fdaa:1234:5678:a70:1b9d:3a11:71f2:5f0f');
  }
  if (!isPrivate(addr)) throw new StoreError('invalid', `address ${address} is not an i6pn address (not in fdaa::/16)`, 'pass an address printed by `i6pnctl endpoint add` or `endpoint list`');
  return addr;
}

async function endpointKeyOfAddress(store: Store, address: string): Promise<{ key: string; addr: Uint8Array; state: AddressRecord['state'] }> {
  const addr = parseAddressArg(address);
  const e = await getLive(store.addresses, addressKey(addr));
  if (!e) {
    // No claim: only an entry written past i6pnctl can have this address. Find it by its key, in any region's bucket.
    const refs = await endpointRefs(store, { workspace: workspaceIdHex(workspaceOf(addr)), endpoint: endpointIdOf(addr) });
    if (refs.length === 0) throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)}`, 'list endpoints with `i6pnctl endpoint list`');
    return { key: refs[0]!.logical, addr, state: 'active' };
  }
  const rec = decodeOrThrow<AddressRecord>(addressRecord, ADDRESSES_BUCKET, e);
  return { key: rec.endpointKey, addr, state: rec.state };
}

export async function getEndpoint(store: Store, address: string): Promise<EndpointRecord | null> {
  const { key, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') return null;
  return liveEndpointByKey(store, key);
}

/** The valid live entry under an endpoint's store-wide key, or null; an invalid one is StoreError 'corrupt'. */
async function liveEndpointByKey(store: Store, key: string): Promise<EndpointRecord | null> {
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) return null;
  const v = validateEndpointEntry(at.logical, at.entry.value);
  if (!v.ok) throw new StoreError('corrupt', `entry ${at.bucket}/${at.key} is invalid (${v.reason}: ${v.message})`, 'fix or delete it with the nats CLI; only i6pnctl should write the store');
  return v.record;
}

/** What the store says of an address: the live endpoint that has it, a removed one and when, or none ever. */
export type AddressLookup =
  | { state: 'live'; record: EndpointRecord }
  | { state: 'removed'; address: string; endpointKey: string; removedAt: string | undefined }
  | { state: 'unknown'; address: string };

/**
 * The address's history in the ledger (i6pn_addresses, never deleted) and,
 * when active, its endpoint. An address outside fdaa::/16 is 'unknown'
 * without a lookup; one that is not an address is StoreError 'invalid'.
 */
export async function lookupAddress(store: Store, address: string): Promise<AddressLookup> {
  let addr: Uint8Array;
  try {
    addr = parseAddress(address);
  } catch (e) {
    throw new StoreError('invalid', (e as Error).message, 'pass an IPv6 address such as fdaa:1234:5678:a70:1b9d:3a11:71f2:5f0f');
  }
  const canonical = formatAddress(addr);
  if (!isPrivate(addr)) return { state: 'unknown', address: canonical };
  const e = await getLive(store.addresses, addressKey(addr));
  if (e) {
    const rec = decodeOrThrow<AddressRecord>(addressRecord, ADDRESSES_BUCKET, e);
    if (rec.state === 'removed') return { state: 'removed', address: canonical, endpointKey: rec.endpointKey, removedAt: rec.removedAt };
  }
  // Active, or an entry written past i6pnctl (no claim): the endpoint entry says.
  const claimed = e !== null || (await endpointRefs(store, { workspace: workspaceIdHex(workspaceOf(addr)), endpoint: endpointIdOf(addr) })).length > 0;
  const record = claimed ? await getEndpoint(store, canonical) : null;
  return record ? { state: 'live', record } : { state: 'unknown', address: canonical };
}

/**
 * The live endpoint with this name: its store-wide name
 * `<region>.<workspace id>.<endpoint id>`, or `<node>/<ifname>` (the host-side
 * veth a runtime named on its node). null when no live endpoint has it;
 * StoreError 'invalid' for something that is neither form.
 */
export async function findEndpointByName(store: Store, name: string): Promise<EndpointRecord | null> {
  const slash = name.indexOf('/');
  let key: string;
  if (slash >= 0) {
    const node = name.slice(0, slash);
    const ifname = name.slice(slash + 1);
    try {
      assertNodeName(node);
      assertIfname(ifname);
    } catch (e) {
      throw invalidInput(e);
    }
    const claim = await getLive(store.ifnames, ifnameKey(node, ifname));
    if (!claim) return null;
    key = decodeOrThrow<IfnameRecord>(ifnameRecord, IFNAMES_BUCKET, claim).endpointKey;
  } else if (parseEndpointKey(name)) {
    key = name;
  } else if (isValidDnsLabel(name)) {
    // Its name in DNS (endpoint add --name): unique in a workspace and region, so it names one endpoint only when no other workspace or region uses it.
    const claims = await readAll(store.names, `*.*.${name}`);
    if (claims.length === 0) return null;
    if (claims.length > 1) {
      throw new StoreError('invalid', `${claims.length} endpoints are named ${JSON.stringify(name)} (in other workspaces or regions)`, 'pass its address, <node>/<ifname> or <region>.<workspace id>.<endpoint id>');
    }
    key = decodeOrThrow<NameRecord>(nameRecord, NAMES_BUCKET, claims[0]!).endpointKey;
  } else {
    throw new StoreError('invalid', `${JSON.stringify(name)} is not an endpoint address or name`, 'pass an address, its name, <region>.<workspace id>.<endpoint id>, or <node>/<ifname>');
  }
  const region = parseEndpointKey(key)?.region;
  if (region === undefined || !(await getRegion(store, region))) return null;
  return liveEndpointByKey(store, key);
}

/** The region with this id (its id key), or null. */
export async function regionById(store: Store, id: number): Promise<RegionRecord | null> {
  const e = await getLive(store.regions, regionIdKey(id));
  return e ? decodeOrThrow<RegionRecord>(regionRecord, REGIONS_BUCKET, e) : null;
}

/** The workspace with this id, deleted ones included (their id key is kept, with `deletedAt`), or null. */
export async function workspaceById(store: Store, id: number): Promise<WorkspaceRecord | null> {
  const e = await getLive(store.workspaces, workspaceIdKey(id));
  return e ? decodeOrThrow<WorkspaceRecord>(workspaceRecord, WORKSPACES_BUCKET, e) : null;
}

/**
 * Remove an endpoint by its store-wide key: the endpoint entry (agents stop
 * allowing it; both layouts during an upgrade), then its interface claim, then
 * its address is marked removed (kept forever). Returns the removed record, or
 * null if there was no valid endpoint under the key.
 */
async function removeEndpointByKey(store: Store, key: string): Promise<EndpointRecord | null> {
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) return null;
  const v = validateEndpointEntry(key, at.entry.value);
  await deleteEndpointEntries(store, found, key);
  if (!v.ok) return null;
  await removeTunnelsOf(store, v.record);
  await finishRemoval(store, v.record, v.addr, key);
  return v.record;
}

async function finishRemoval(
  store: Store,
  record: Pick<EndpointRecord, 'node' | 'ifname' | 'address'> & Partial<Pick<EndpointRecord, 'name' | 'region' | 'workspaceId'>>,
  addr: Uint8Array,
  key: string,
): Promise<void> {
  if (record.name !== undefined && record.region !== undefined && record.workspaceId !== undefined) {
    await releaseName(store, { region: record.region, workspaceId: record.workspaceId }, record.name, key);
  }
  const ik = record.node && record.ifname ? ifnameKey(record.node, record.ifname) : null;
  const claim = ik ? await getLive(store.ifnames, ik) : null;
  if (ik && claim) {
    const d = decodeRecord(ifnameRecord, claim.value);
    if (d.ok && d.record.endpointKey === key) await store.ifnames.delete(ik, { previousSeq: claim.revision }).catch(() => undefined);
  }
  for (let i = 0; i < 8; i++) {
    const a = await getLive(store.addresses, addressKey(addr));
    if (!a) {
      // An endpoint that was never claimed (written by hand): claim its address as removed, so it is never handed out.
      const now = new Date().toISOString();
      const removed = addressRecord.parse({ v: SCHEMA_VERSION, address: formatAddress(addr), endpointKey: key, state: 'removed', createdAt: now, removedAt: now });
      try {
        await store.addresses.create(addressKey(addr), enc(removed));
        return;
      } catch (err) {
        if (!isConflict(err)) throw err;
        continue;
      }
    }
    const d = decodeRecord(addressRecord, a.value);
    if (d.ok && d.record.state === 'removed') return;
    const removed: AddressRecord = d.ok
      ? { ...d.record, state: 'removed', removedAt: new Date().toISOString() }
      : { v: SCHEMA_VERSION, address: formatAddress(addr), endpointKey: key, state: 'removed', createdAt: new Date().toISOString(), removedAt: new Date().toISOString() };
    try {
      await store.addresses.update(addressKey(addr), enc(removed), a.revision);
      return;
    } catch (err) {
      if (!isConflict(err)) throw err;
    }
  }
}

/** Remove the endpoint that has `address`. Its address is never handed out again. */
export async function removeEndpoint(store: Store, address: string): Promise<EndpointRecord> {
  const { key, addr, state } = await endpointKeyOfAddress(store, address);
  if (state === 'removed') throw new StoreError('not-found', `endpoint ${formatAddress(addr)} was already removed`, 'list live endpoints with `i6pnctl endpoint list`');
  const found = await findEndpoint(store, key);
  const at = found.current ?? found.legacy;
  if (!at) {
    // Registration or removal died half-way: clear what is left of it.
    for (const c of await readAll(store.ifnames, '>')) {
      const d = decodeRecord(ifnameRecord, c.value);
      if (d.ok && d.record.endpointKey === key) await store.ifnames.delete(c.key, { previousSeq: c.revision }).catch(() => undefined);
    }
    await finishRemoval(store, { node: '', ifname: '', address: formatAddress(addr) }, addr, key);
    throw new StoreError('not-found', `no endpoint has address ${formatAddress(addr)} (a half-finished registration was cleared)`, 'nothing more to do');
  }
  const v = validateEndpointEntry(key, at.entry.value);
  await deleteEndpointEntries(store, found, formatAddress(addr));
  if (!v.ok) {
    await finishRemoval(store, { node: '', ifname: '', address: formatAddress(addr) }, addr, key);
    throw new StoreError('corrupt', `endpoint entry ${at.bucket}/${at.key} was invalid (${v.reason}: ${v.message}); it has been deleted`, 'nothing more to do');
  }
  await removeTunnelsOf(store, v.record);
  await finishRemoval(store, v.record, v.addr, key);
  return v.record;
}

export interface EndpointFilter {
  workspace?: string;
  region?: string;
  node?: string;
}

/** Endpoints matching the filter, and the entries under the same keys that break the schema. */
export async function listEndpoints(store: Store, filter: EndpointFilter = {}): Promise<{ endpoints: EndpointRecord[]; invalid: InvalidEntry[] }> {
  let wsHex = '*';
  if (filter.workspace !== undefined) wsHex = workspaceIdHex((await requireWorkspace(store, filter.workspace)).record.id);
  if (filter.region !== undefined) await requireRegion(store, filter.region);
  if (filter.node !== undefined) {
    try {
      assertNodeName(filter.node);
    } catch (e) {
      throw invalidInput(e);
    }
  }
  // One region's bucket, or every one's; one wildcard filter per keys call (nats-server 2.9 takes no more).
  const { valid, invalid } = await validateEndpoints(
    store,
    await endpointEntries(store, { ...(filter.region !== undefined ? { region: filter.region } : {}), ...(wsHex !== '*' ? { workspace: wsHex } : {}) }),
  );
  const endpoints = valid.map((e) => e.record).filter((r) => filter.node === undefined || r.node === filter.node);
  return { endpoints: sortEndpoints(endpoints), invalid };
}

function sortEndpoints(list: EndpointRecord[]): EndpointRecord[] {
  return list.sort(
    (a, b) => a.region.localeCompare(b.region) || a.workspace.localeCompare(b.workspace) || a.node.localeCompare(b.node) || a.address.localeCompare(b.address),
  );
}

/**
 * The endpoints that `address` may reach: live i6pn endpoints of the same
 * workspace in the same region, itself excluded. An endpoint registered
 * without i6pn reaches no private address, so it has no peers.
 */
export async function peersOf(store: Store, address: string): Promise<{ endpoint: EndpointRecord; peers: EndpointRecord[]; invalid: InvalidEntry[] }> {
  const endpoint = await getEndpoint(store, address);
  if (!endpoint) throw new StoreError('not-found', `no live endpoint has address ${formatAddress(parseAddressArg(address))}`, 'list endpoints with `i6pnctl endpoint list`');
  const addr = parseAddress(endpoint.address);
  const peers: EndpointRecord[] = [];
  const invalid: InvalidEntry[] = [];
  // A gateway reaches tunneled ports only (`tunnel list`), no peer.
  if (endpoint.i6pn && endpoint.role !== GATEWAY_ROLE) {
    const read = await validateEndpoints(store, await endpointEntries(store, { region: endpoint.region, workspace: workspaceIdHex(workspaceOf(addr)) }));
    invalid.push(...read.invalid);
    for (const v of read.valid) {
      if (v.record.address === endpoint.address || !v.record.i6pn) continue;
      if (workspaceOf(v.addr) !== workspaceOf(addr) || regionOf(v.addr) !== regionOf(addr)) continue;
      peers.push(v.record);
    }
  }
  return { endpoint, peers: sortEndpoints(peers), invalid };
}

// ---------------------------------------------------------------- nodes

export interface NodeStatus extends NodeRecord {
  /** Seconds since the last heartbeat (at the time of listing). */
  heartbeatAgeSeconds: number;
  /** No heartbeat for longer than the stale threshold. */
  stale: boolean;
}

export const DEFAULT_STALE_AFTER_MS = 30_000;

export async function listNodes(
  store: Store,
  opts: { staleAfterMs?: number; now?: Date; region?: string } = {},
): Promise<{ nodes: NodeStatus[]; invalid: InvalidEntry[] }> {
  const staleAfter = opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS;
  const now = (opts.now ?? new Date()).getTime();
  const nodes: NodeStatus[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(store.nodes, '>')) {
    const d = decodeRecord(nodeRecord, e.value);
    if (!d.ok) {
      invalid.push({ bucket: NODES_BUCKET, key: e.key, reason: d.reason, message: d.message });
      continue;
    }
    if (d.record.name !== e.key) {
      invalid.push({ bucket: NODES_BUCKET, key: e.key, reason: 'key', message: `key does not match the record's name ${JSON.stringify(d.record.name)}` });
      continue;
    }
    if (opts.region !== undefined && d.record.region !== opts.region) continue;
    const age = Math.max(0, now - Date.parse(d.record.heartbeatAt));
    nodes.push({ ...d.record, heartbeatAgeSeconds: Math.round(age / 100) / 10, stale: age > staleAfter });
  }
  return { nodes: nodes.sort((a, b) => a.region.localeCompare(b.region) || a.name.localeCompare(b.name)), invalid };
}

/** Counts of a workspace's endpoints per region (for `workspace show`). */
export async function workspaceEndpointCounts(store: Store, workspace: WorkspaceRecord): Promise<{ total: number; byRegion: Record<string, number>; invalid: InvalidEntry[] }> {
  const byRegion: Record<string, number> = {};
  const { valid, invalid } = await validateEndpoints(store, await endpointEntries(store, { workspace: workspaceIdHex(workspace.id) }));
  for (const v of valid) byRegion[v.record.region] = (byRegion[v.record.region] ?? 0) + 1;
  return { total: valid.length, byRegion, invalid };
}

// ---------------------------------------------------------------- migration from the first layout

/** An endpoint that the region bucket holds with another value than the first layout's bucket: not overwritten. */
export interface MigrateConflict {
  /** The region bucket and the key in it (the entry to look at). */
  bucket: string;
  key: string;
  message: string;
}

/** A live agent that reports a version older than this i6pnctl's, or one that cannot be compared. */
export interface OldAgent {
  name: string;
  region: string;
  version: string;
}

export interface MigrateReport {
  /** LEGACY_ENDPOINTS_BUCKET. */
  legacyBucket: string;
  /** Whether it exists; false: nothing to migrate (and nothing else was done). */
  found: boolean;
  /** The endpoints bucket of every registered region, each created if it was absent. */
  buckets: string[];
  /** Live entries in the legacy bucket. */
  entries: number;
  /** Created in their region's bucket by this run. */
  copied: number;
  /** Already in their region's bucket with the same value (a run before, or i6pnctl's double write). */
  unchanged: number;
  /** Removed or rewritten in the legacy bucket while this run copied them: not copied (run migrate again). */
  changedMeanwhile: number;
  conflicts: MigrateConflict[];
  /** Legacy entries that break the schema or name a region that is not registered: skipped (agents never applied them). */
  invalid: InvalidEntry[];
  /** Live agents (heartbeat not stale) older than this version: they still read the legacy bucket. */
  oldAgents: OldAgent[];
  /** The legacy bucket was deleted (finish). */
  finished: boolean;
}

export interface MigrateOptions {
  /** This i6pnctl's version (package.json; an agent of the same release reports the same). */
  version: string;
  /** After copying, delete the legacy bucket: refused while `oldAgents` or `conflicts` are not empty, unless `force`. */
  finish?: boolean;
  force?: boolean;
  /** Heartbeat age past which an agent is not counted (default DEFAULT_STALE_AFTER_MS). */
  staleAfterMs?: number;
}

const VERSION_PATTERN = /^v?(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]*)?$/;

/**
 * Orders two versions `MAJOR.MINOR.PATCH[-pre][+build]` as semver does
 * (`0.2.0-rc.1` < `0.2.0` < `0.10.0`); null when either is not one.
 */
export function compareVersions(a: string, b: string): number | null {
  const pa = VERSION_PATTERN.exec(a);
  const pb = VERSION_PATTERN.exec(b);
  if (!pa || !pb) return null;
  for (let i = 1; i <= 3; i++) {
    const d = Number(pa[i]) - Number(pb[i]);
    if (d !== 0) return Math.sign(d);
  }
  const [ra, rb] = [pa[4], pb[4]];
  if (ra === undefined || rb === undefined) return ra === rb ? 0 : ra === undefined ? 1 : -1;
  const ia = ra.split('.');
  const ib = rb.split('.');
  for (let i = 0; i < Math.max(ia.length, ib.length); i++) {
    const [x, y] = [ia[i], ib[i]];
    if (x === undefined || y === undefined) return x === undefined ? -1 : 1;
    const nx = /^\d+$/.test(x);
    const ny = /^\d+$/.test(y);
    const d = nx && ny ? Number(x) - Number(y) : nx !== ny ? (nx ? -1 : 1) : x < y ? -1 : x > y ? 1 : 0;
    if (d !== 0) return Math.sign(d);
  }
  return 0;
}

/** Two values of one endpoint are the same: the same bytes, or the same valid record. */
function sameEndpoint(logical: string, a: Uint8Array, b: Uint8Array): boolean {
  if (Buffer.from(a).equals(Buffer.from(b))) return true;
  const va = validateEndpointEntry(logical, a);
  const vb = validateEndpointEntry(logical, b);
  return va.ok && vb.ok && JSON.stringify(va.record) === JSON.stringify(vb.record);
}

/**
 * Copy one legacy entry into its region's bucket, create-if-absent. After the
 * copy the legacy entry must still be there, unchanged: a removal that ran in
 * between deleted it before the copy existed, so the copy is deleted again
 * (see deleteEndpointEntries).
 */
async function copyLegacyEntry(legacy: KV, kv: KV, bucket: string, key: string, e: KvEntry): Promise<'copied' | 'unchanged' | 'changed' | MigrateConflict> {
  for (let attempt = 0; attempt < 4; attempt++) {
    let revision: number;
    try {
      revision = await kv.create(key, e.value);
    } catch (err) {
      if (!isConflict(err)) throw err;
      const there = await getLive(kv, key);
      if (!there) continue; // removed in between: try again
      if (sameEndpoint(e.key, there.value, e.value)) return 'unchanged';
      return { bucket, key, message: `holds another value than ${LEGACY_ENDPOINTS_BUCKET}/${e.key}; not overwritten` };
    }
    const still = await getLive(legacy, e.key);
    if (still?.revision === e.revision) return 'copied';
    await kv.delete(key, { previousSeq: revision }).catch(() => undefined);
    return 'changed';
  }
  return 'changed';
}

/**
 * `i6pnctl migrate`: copy every entry of the first layout's bucket into its
 * region's bucket (creating the bucket of every registered region), never
 * overwriting: an entry already there with the same value counts as
 * unchanged, one with another value is a conflict, an invalid legacy entry
 * is skipped. Running it again changes nothing. With `finish`, the legacy
 * bucket is then deleted, unless a live agent (its heartbeat not stale)
 * reports an older version than `version`, or conflicts remain: StoreError
 * 'upgrade-pending', unless `force`. Without a legacy bucket it does nothing
 * (`found: false`).
 */
export async function migrateEndpoints(store: Store, opts: MigrateOptions): Promise<MigrateReport> {
  const report: MigrateReport = {
    legacyBucket: LEGACY_ENDPOINTS_BUCKET,
    found: false,
    buckets: [],
    entries: 0,
    copied: 0,
    unchanged: 0,
    changedMeanwhile: 0,
    conflicts: [],
    invalid: [],
    oldAgents: [],
    finished: false,
  };
  const legacy = await store.legacyEndpoints({ recheck: true });
  if (!legacy) return report;
  report.found = true;

  const { regions } = await listRegions(store);
  const registered = new Set(regions.map((r) => r.name));
  for (const r of regions) {
    await store.endpoints(r.name);
    report.buckets.push(endpointsBucket(r.name));
  }

  const keys = await keysOf(legacy, '>');
  const settled = await settleLimited(keys, 64, async (legacyKey) => {
    const e = await getLive(legacy, legacyKey);
    if (!e) return;
    report.entries++;
    const v = validateEndpointEntry(legacyKey, e.value);
    if (!v.ok) {
      report.invalid.push({ bucket: LEGACY_ENDPOINTS_BUCKET, key: legacyKey, reason: v.reason, message: v.message });
      return;
    }
    const loc = locateEndpointKey(legacyKey)!;
    if (!registered.has(loc.region)) {
      report.invalid.push({ bucket: LEGACY_ENDPOINTS_BUCKET, key: legacyKey, reason: 'key', message: `region ${JSON.stringify(loc.region)} is not registered, so it has no endpoints bucket` });
      return;
    }
    const r = await copyLegacyEntry(legacy, await store.endpoints(loc.region), loc.bucket, loc.key, e);
    if (r === 'copied') report.copied++;
    else if (r === 'unchanged') report.unchanged++;
    else if (r === 'changed') report.changedMeanwhile++;
    else report.conflicts.push(r);
  });
  const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) throw failed.reason;
  report.conflicts.sort((a, b) => a.bucket.localeCompare(b.bucket) || a.key.localeCompare(b.key));
  report.invalid.sort((a, b) => a.key.localeCompare(b.key));

  const { nodes } = await listNodes(store, { staleAfterMs: opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS });
  report.oldAgents = nodes
    .filter((n) => !n.stale && (compareVersions(n.version, opts.version) ?? -1) < 0)
    .map((n) => ({ name: n.name, region: n.region, version: n.version }));
  if (!opts.finish) return report;

  if (!opts.force && report.oldAgents.length > 0) {
    const n = report.oldAgents.length;
    const list = report.oldAgents.slice(0, 5).map((a) => `${a.name} (${a.version})`).join(', ');
    throw new StoreError(
      'upgrade-pending',
      `${n} live agent${n === 1 ? '' : 's'} report${n === 1 ? 's' : ''} a version older than ${opts.version} and still read${n === 1 ? 's' : ''} ${LEGACY_ENDPOINTS_BUCKET}: ${list}${n > 5 ? `, and ${n - 5} more` : ''}`,
      'upgrade them first (`i6pnctl node list` shows their versions), or pass --force; the legacy bucket is kept',
    );
  }
  if (!opts.force && report.conflicts.length > 0) {
    const n = report.conflicts.length;
    throw new StoreError(
      'upgrade-pending',
      `${n} endpoint${n === 1 ? '' : 's'} differ${n === 1 ? 's' : ''} between ${LEGACY_ENDPOINTS_BUCKET} and the region buckets (first: ${report.conflicts[0]!.bucket}/${report.conflicts[0]!.key})`,
      'see `i6pnctl migrate` for the list and fix or delete the entries with the nats CLI, or pass --force to keep the region buckets\' values; the legacy bucket is kept',
    );
  }
  await ifLegacyExists(store, () => legacy.destroy(), true);
  await store.legacyEndpoints({ recheck: true });
  report.finished = true;
  return report;
}

// ---------------------------------------------------------------- tunnel gateways

/**
 * A tunnel gateway is a member of its region in workspace 0: registered as an
 * endpoint is (its address claimed once, never reused; one interface name per
 * node), with `role: "gateway"`, at fdaa:0:0:<region>:6a7e:<48 random bits>.
 * The runtime that starts the gateway makes its veth as for a container; the
 * agents bind, hook and route it; the dataplane lets it reach tunneled ports
 * only. What the running gateway says of itself (its public address, which
 * tunnel it serves on which port) is its record in GATEWAYS_BUCKET.
 */
export interface GatewaySpec {
  region: string;
  node: string;
  /** Host-side interface name (default gatewayIfname). */
  ifname?: string;
}

/** The interface name a gateway gets by default: "i6g" + the last 12 hex digits of its id (15 characters). */
export function gatewayIfname(address: Uint8Array): string {
  return `i6g${endpointIdOf(address).slice(4)}`;
}

/** Register a gateway of `region` on `node`; prints its new address. */
export async function addGateway(store: Store, spec: GatewaySpec): Promise<EndpointRecord> {
  assertNameOrInvalid('region', spec.region);
  const region = await requireRegion(store, spec.region);
  return register(store, { workspace: { name: INFRA_WORKSPACE_NAME, id: INFRA_WORKSPACE_ID }, region }, {
    workspace: INFRA_WORKSPACE_NAME,
    region: spec.region,
    node: spec.node,
    ifname: spec.ifname ?? gatewayIfname,
    i6pn: true,
  });
}

export interface GatewayStatus {
  /** Its registration (an endpoint of workspace 0). */
  member: EndpointRecord;
  /** What the running gateway last wrote, or null when it never ran. */
  state: GatewayRecord | null;
  heartbeatAgeSeconds: number | null;
  /** No heartbeat for longer than the stale threshold (or never one). */
  stale: boolean;
}

/** The live records of a region's gateways (GATEWAYS_BUCKET), by address. */
async function gatewayStates(store: Store, region: string | undefined, invalid: InvalidEntry[]): Promise<Map<string, GatewayRecord>> {
  const out = new Map<string, GatewayRecord>();
  for (const e of await readAll(store.gateways, region === undefined ? '>' : `${region}.*`)) {
    const d = decodeRecord(gatewayRecord, e.value);
    if (!d.ok) invalid.push({ bucket: GATEWAYS_BUCKET, key: e.key, reason: d.reason, message: d.message });
    else out.set(d.record.address, d.record);
  }
  return out;
}

const ageOf = (r: { heartbeatAt: string } | null, now: number): number | null => (r ? Math.max(0, now - Date.parse(r.heartbeatAt)) : null);

export async function listGateways(store: Store, opts: { region?: string; staleAfterMs?: number } = {}): Promise<{ gateways: GatewayStatus[]; invalid: InvalidEntry[] }> {
  if (opts.region !== undefined) await requireRegion(store, opts.region);
  const { valid, invalid } = await validateEndpoints(
    store,
    await endpointEntries(store, { ...(opts.region !== undefined ? { region: opts.region } : {}), workspace: workspaceIdHex(INFRA_WORKSPACE_ID) }),
  );
  const states = await gatewayStates(store, opts.region, invalid);
  const now = Date.now();
  const gateways = sortEndpoints(valid.map((v) => v.record).filter((r) => r.role === GATEWAY_ROLE)).map((member): GatewayStatus => {
    const state = states.get(member.address) ?? null;
    const age = ageOf(state, now);
    return { member, state, heartbeatAgeSeconds: age === null ? null : Math.round(age / 100) / 10, stale: age === null || age > (opts.staleAfterMs ?? DEFAULT_STALE_AFTER_MS) };
  });
  return { gateways, invalid };
}

/** Remove a gateway: its registration (as `endpoint remove`) and its record. */
export async function removeGateway(store: Store, address: string): Promise<EndpointRecord> {
  const member = await getEndpoint(store, address);
  if (!member) throw new StoreError('not-found', `no live gateway has address ${formatAddress(parseAddressArg(address))}`, 'list gateways with `i6pnctl gateway list`');
  if (member.role !== GATEWAY_ROLE) throw new StoreError('invalid', `${member.address} is a tenant's endpoint, not a gateway`, 'remove it with `i6pnctl endpoint remove`');
  const removed = await removeEndpoint(store, address);
  await store.gateways.delete(gatewayKey(removed.region, parseAddress(removed.address))).catch(() => undefined);
  return removed;
}

// ---------------------------------------------------------------- tunnels

/**
 * A tunnel exposes one port of one tenant endpoint through its region's
 * gateways. Its entry lives in the region's tunnels bucket under
 * `<workspace id>.<endpoint id>.<proto>.<port>` (tunnelBucketKey): creating
 * that key is the claim, so an (endpoint, protocol, port) has one tunnel at
 * most. Its id is 48 random bits (what people and `tunnel remove` use). The
 * agents fill the dataplane's tunnels map from the bucket; each gateway
 * listens for each tunnel on a port of its own choosing and says so in its
 * record, which `tunnel list` joins in.
 */
export interface TunnelSpec {
  /** The endpoint's address. */
  endpoint: string;
  port: number;
  proto?: TunnelProtocol;
  /** Must be the endpoint's region, when given. */
  region?: string;
  /** The gateway terminates TLS with its certificate. */
  tls?: boolean;
}

/** Where the public reaches a tunnel: one per gateway that serves it. */
export interface TunnelPublic {
  gateway: string;
  node: string;
  publicAddress: string;
  port: number;
  stale: boolean;
}

export interface TunnelStatus extends TunnelRecord {
  public: TunnelPublic[];
  /** Gateways that picked it up and could not serve it. */
  refused: { gateway: string; reason: string }[];
}

function checkTunnelInput(spec: TunnelSpec): TunnelProtocol {
  const proto = spec.proto ?? 'tcp';
  if (!(TUNNEL_PROTOCOLS as readonly string[]).includes(proto)) {
    throw new StoreError('invalid', `protocol ${JSON.stringify(proto)} cannot be tunneled`, `use ${TUNNEL_PROTOCOLS.join(' or ')} (the gateway relays TCP)`);
  }
  if (!Number.isInteger(spec.port) || spec.port < 1 || spec.port > 65535) {
    throw new StoreError('invalid', `port ${spec.port} is out of range`, 'use a port from 1 to 65535');
  }
  if (spec.region !== undefined) assertNameOrInvalid('region', spec.region);
  return proto;
}

/** The live tenant endpoint a tunnel may expose, or the reason it may not. */
async function tunnelTarget(store: Store, address: string, region: string | undefined): Promise<EndpointRecord> {
  const ep = await getEndpoint(store, address);
  if (!ep) throw new StoreError('not-found', `endpoint ${formatAddress(parseAddressArg(address))} was removed`, 'list live endpoints with `i6pnctl endpoint list`');
  if (ep.role === GATEWAY_ROLE) throw new StoreError('invalid', `${ep.address} is a gateway, not a tenant's endpoint`, 'tunnel an endpoint listed by `i6pnctl endpoint list`');
  if (!ep.i6pn) throw new StoreError('invalid', `endpoint ${ep.address} has no i6pn`, 'a gateway reaches its endpoint over i6pn: tunnel an endpoint registered without --no-i6pn');
  if (region !== undefined && region !== ep.region) throw new StoreError('invalid', `endpoint ${ep.address} is in region ${ep.region}, not ${region}`, `leave --region out, or pass --region ${ep.region}`);
  return ep;
}

/** Record a tunnel. The gateways of its region pick it up; none need be running. */
export async function createTunnel(store: Store, spec: TunnelSpec): Promise<TunnelRecord> {
  const proto = checkTunnelInput(spec);
  const ep = await tunnelTarget(store, spec.endpoint, spec.region);
  const record = tunnelRecord.parse({
    v: SCHEMA_VERSION,
    id: randomBytes(6).toString('hex'),
    endpoint: ep.address,
    workspace: ep.workspace,
    workspaceId: ep.workspaceId,
    region: ep.region,
    regionId: ep.regionId,
    proto,
    port: spec.port,
    tls: spec.tls ?? false,
    createdAt: new Date().toISOString(),
  });
  const kv = await store.tunnels(ep.region);
  const key = tunnelBucketKey(record);
  let revision: number;
  try {
    revision = await kv.create(key, enc(record));
  } catch (e) {
    if (!isConflict(e)) throw e;
    const other = await getLive(kv, key);
    const d = other ? validateTunnelEntry(ep.region, ep.regionId, key, other.value) : null;
    throw new StoreError(
      'exists',
      `endpoint ${ep.address} already has a ${proto} tunnel to port ${spec.port}${d?.ok ? ` (id ${d.record.id})` : ''}`,
      'list tunnels with `i6pnctl tunnel list`; remove that one first to make it again',
    );
  }
  // The endpoint must still be there: a removal that swept its tunnels before this one was created would miss it.
  const now = await getEndpoint(store, ep.address).catch(() => null);
  if (!now || now.createdAt !== ep.createdAt) {
    await kv.delete(key, { previousSeq: revision }).catch(() => undefined);
    throw new StoreError('not-found', `endpoint ${ep.address} was removed while its tunnel was being created`, 'nothing was recorded');
  }
  return record;
}

/** Every valid tunnel of a region, with where it lives. */
async function regionTunnels(store: Store, region: RegionRecord, invalid: InvalidEntry[]): Promise<{ kv: KV; key: string; revision: number; record: TunnelRecord }[]> {
  const kv = await store.tunnels(region.name);
  const out: { kv: KV; key: string; revision: number; record: TunnelRecord }[] = [];
  for (const e of await readAll(kv, '>')) {
    const v = validateTunnelEntry(region.name, region.id, e.key, e.value);
    if (v.ok) out.push({ kv, key: e.key, revision: e.revision, record: v.record });
    else invalid.push({ bucket: tunnelsBucket(region.name), key: e.key, reason: v.reason, message: v.message });
  }
  return out;
}

async function regionsOf(store: Store, region: string | undefined): Promise<RegionRecord[]> {
  return region === undefined ? (await listRegions(store)).regions : [await requireRegion(store, region)];
}

export async function listTunnels(
  store: Store,
  filter: { region?: string; endpoint?: string; staleAfterMs?: number } = {},
): Promise<{ tunnels: TunnelStatus[]; invalid: InvalidEntry[] }> {
  if (filter.region !== undefined) assertNameOrInvalid('region', filter.region);
  const endpoint = filter.endpoint === undefined ? undefined : formatAddress(parseAddressArg(filter.endpoint));
  const invalid: InvalidEntry[] = [];
  const now = Date.now();
  const tunnels: TunnelStatus[] = [];
  for (const region of await regionsOf(store, filter.region)) {
    const found = (await regionTunnels(store, region, invalid)).filter((t) => endpoint === undefined || t.record.endpoint === endpoint);
    if (found.length === 0) continue;
    const states = [...(await gatewayStates(store, region.name, invalid)).values()];
    for (const { record } of found) {
      const pub: TunnelPublic[] = [];
      const refused: TunnelStatus['refused'] = [];
      for (const g of states) {
        const age = ageOf(g, now)!;
        for (const l of g.listeners) if (l.tunnel === record.id) pub.push({ gateway: g.address, node: g.node, publicAddress: g.publicAddress, port: l.port, stale: age > (filter.staleAfterMs ?? DEFAULT_STALE_AFTER_MS) });
        for (const r of g.refused) if (r.tunnel === record.id) refused.push({ gateway: g.address, reason: r.reason });
      }
      tunnels.push({ ...record, public: pub, refused });
    }
  }
  tunnels.sort((a, b) => a.region.localeCompare(b.region) || a.endpoint.localeCompare(b.endpoint) || a.port - b.port);
  return { tunnels, invalid };
}

/** Remove the tunnel with this id: its gateways stop serving it, its agents close its port to them. */
export async function removeTunnel(store: Store, id: string): Promise<TunnelRecord> {
  if (!TUNNEL_ID_PATTERN.test(id)) throw new StoreError('invalid', `invalid tunnel id ${JSON.stringify(id)}`, 'pass the 12 hex digits `i6pnctl tunnel list` shows');
  for (const region of await regionsOf(store, undefined)) {
    for (const t of await regionTunnels(store, region, [])) {
      if (t.record.id !== id) continue;
      try {
        await t.kv.delete(t.key, { previousSeq: t.revision });
      } catch (e) {
        if (isConflict(e)) throw new StoreError('conflict', `tunnel ${id} changed while it was being removed`, 'run the command again');
        throw e;
      }
      return t.record;
    }
  }
  throw new StoreError('not-found', `no tunnel has id ${id}`, 'list tunnels with `i6pnctl tunnel list`');
}

/** An endpoint is removed: so are its tunnels (any entry under its key prefix, valid or not). */
async function removeTunnelsOf(store: Store, endpoint: EndpointRecord): Promise<void> {
  if (endpoint.role === GATEWAY_ROLE) return;
  let kv: KV;
  try {
    kv = await store.tunnels(endpoint.region);
  } catch (e) {
    if (e instanceof StoreError && e.code === 'not-found') return; // the region is gone, and its tunnels with it
    throw e;
  }
  for (const e of await readAll(kv, `${endpointBucketKey(endpoint)}.>`)) {
    await kv.delete(e.key, { previousSeq: e.revision }).catch(async (err: unknown) => {
      if (!isConflict(err)) throw err;
      await kv.delete(e.key); // changed meanwhile: the endpoint is gone all the same
    });
  }
}

export { addressHex, regionIdHex, workspaceIdHex };
