/**
 * The membership store's core, shared by every part that opens it: the
 * connection and its buckets (connectStore, on lib/nats.ts and the bucket
 * table of lib/schema.ts), the errors a person can act on (StoreError), the
 * reading and decoding of entries, and the lookups of regions and workspaces
 * by name and id. The agent reads its region through this module
 * (getRegion); nothing here writes a record.
 *
 * What the controller writes lives beside it, one file per aggregate, in
 * controller/store/: regions, workspaces, endpoints (with their names and
 * tunnels swept on removal), clusters, nodes, gateways, tunnels, the
 * migration from the first layout, and endpoint-entries (where an endpoint's
 * entry lives, in both layouts). Their claims follow one rule, stated once
 * there (controller/store/endpoints.ts): uniqueness from create-if-absent
 * and compare-and-set, never read-then-write.
 */
import {
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  JetStreamApiCodes,
  JetStreamApiError,
  RetentionPolicy,
  StorageType,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { nanos, type NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV, type KvEntry } from '@nats-io/kv';
import type { z } from 'zod';
import { CredsError, connectNats, isBucketGone, isJetStreamMissing, openBucket, type BucketSettings } from './nats.js';
import { parseAddress, randomEndpointBits, randomRegionId, randomWorkspaceId } from './address.js';
import {
  BUCKET_TABLE,
  bucketOfKvStream,
  endpointsBucketSpec,
  kvStream,
  tunnelsBucket,
  tunnelsBucketSpec,
  LEGACY_ENDPOINTS_BUCKET,
  REGIONS_BUCKET,
  WORKSPACES_BUCKET,
  InvalidNameError,
  assertDnsLabel,
  assertIfname,
  assertName,
  assertNodeName,
  decodeRecord,
  endpointsBucket,
  regionIdKey,
  regionNameKey,
  regionOfEndpointsBucket,
  regionRecord,
  workspaceIdKey,
  workspaceNameKey,
  workspaceRecord,
  type InvalidReason,
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

export function isConflict(e: unknown): boolean {
  return (
    e instanceof JetStreamApiError &&
    (e.code === JetStreamApiCodes.StreamWrongLastSequence || e.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

export { isBucketGone } from './nats.js';

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

export function reasonOf(e: unknown): string {
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
        checkInput({ region });
        const existing = await bindExisting(endpointsBucket(region));
        if (existing) return existing;
        await requireRegion(store, region);
        return openBucket(kvm, endpointsBucketSpec(region), settings);
      });
    const tunnelBuckets = new Map<string, Promise<KV>>();
    const openTunnels = (region: string): Promise<KV> =>
      cached(tunnelBuckets, region, async () => {
        checkInput({ region });
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
    if (isJetStreamMissing(e)) {
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

// ---------------------------------------------------------------- reading (also for controller/store/)

/** `fn` over `items` with at most `limit` in flight; results in input order, as Promise.allSettled. */
export async function settleLimited<T, R>(items: T[], limit: number, fn: (item: T, index: number) => Promise<R>): Promise<PromiseSettledResult<R>[]> {
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

export const enc = (v: unknown): string => JSON.stringify(v);

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
export async function getLive(kv: KV, key: string): Promise<KvEntry | null> {
  const e = await kv.get(key);
  return e && e.operation === 'PUT' ? e : null;
}

export async function keysOf(kv: KV, filter: string): Promise<string[]> {
  const out: string[] = [];
  for await (const k of await kv.keys(filter)) out.push(k);
  return out.sort();
}

/** Every live entry whose key matches `filter` (one NATS wildcard filter). */
export async function readAll(kv: KV, filter: string): Promise<KvEntry[]> {
  const keys = await keysOf(kv, filter);
  const out: KvEntry[] = [];
  const batch = 128;
  for (let i = 0; i < keys.length; i += batch) {
    const got = await Promise.all(keys.slice(i, i + batch).map((k) => getLive(kv, k)));
    for (const e of got) if (e) out.push(e);
  }
  return out;
}

export function decodeOrThrow<T>(schema: Parameters<typeof decodeRecord>[0], bucket: string, e: KvEntry): T {
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

/**
 * The records of a bucket keyed `name.<name>` (regions, workspaces), by name;
 * an entry that breaks the schema or sits under another name's key is
 * reported instead.
 */
export async function readNamed<T extends { name: string }>(
  kv: KV,
  bucket: string,
  schema: z.ZodType<T>,
  keyOf: (name: string) => string,
): Promise<{ records: T[]; invalid: InvalidEntry[] }> {
  const records: T[] = [];
  const invalid: InvalidEntry[] = [];
  for (const e of await readAll(kv, 'name.*')) {
    const d = decodeRecord(schema, e.value);
    if (!d.ok) invalid.push({ bucket, key: e.key, reason: d.reason, message: d.message });
    else if (keyOf(d.record.name) !== e.key) invalid.push({ bucket, key: e.key, reason: 'key', message: `key does not match the record's name ${JSON.stringify(d.record.name)}` });
    else records.push(d.record);
  }
  return { records: records.sort((a, b) => a.name.localeCompare(b.name)), invalid };
}

// ---------------------------------------------------------------- input

/** What the store's operations take, as an operator or a runtime gives it. */
export interface StoreInput {
  region?: string | undefined;
  workspace?: string | undefined;
  node?: string | undefined;
  nodes?: readonly string[];
  ifname?: string | undefined;
  /** Any IPv6 address: parsed here; an operation that needs an i6pn one says so. */
  address?: string | undefined;
  /** An endpoint's DNS name. */
  name?: string | undefined;
  cluster?: string | undefined;
}

/**
 * The one check of input: StoreError 'invalid' (what is wrong, and the rule)
 * for the first bad field. Every operation of the store runs it on what it
 * is given; i6pnctl runs it before connecting as well, so that a typo is a
 * usage error even when NATS is down.
 */
export function checkInput(input: StoreInput): void {
  try {
    if (input.name !== undefined) assertDnsLabel('endpoint', input.name);
    if (input.cluster !== undefined) assertDnsLabel('cluster', input.cluster);
    if (input.region !== undefined) assertName('region', input.region);
    if (input.workspace !== undefined) assertName('workspace', input.workspace);
    if (input.node !== undefined) assertNodeName(input.node);
    for (const n of input.nodes ?? []) assertNodeName(n);
    if (input.ifname !== undefined) assertIfname(input.ifname);
  } catch (e) {
    if (e instanceof InvalidNameError) throw new StoreError('invalid', e.what, `use ${e.rule}`);
    throw e;
  }
  if (input.address !== undefined) parseAddressInput(input.address);
}

/** An address as given (any IPv6 spelling), or StoreError 'invalid'. */
export function parseAddressInput(address: string): Uint8Array {
  try {
    return parseAddress(address);
  } catch (e) {
    throw new StoreError('invalid', (e as Error).message, 'pass an endpoint address such as fdaa:1234:5678:a70:1b9d:3a11:71f2:5f0f');
  }
}

// ---------------------------------------------------------------- regions and workspaces by name and id

export async function getRegion(store: Pick<Store, 'regions'>, name: string): Promise<RegionRecord | null> {
  checkInput({ region: name });
  const e = await getLive(store.regions, regionNameKey(name));
  return e ? decodeOrThrow<RegionRecord>(regionRecord, REGIONS_BUCKET, e) : null;
}

export async function requireRegion(store: Store, name: string): Promise<RegionRecord> {
  const r = await getRegion(store, name);
  if (!r) throw new StoreError('not-found', `unknown region ${JSON.stringify(name)}`, 'list regions with `i6pnctl region list` or add it with `i6pnctl region add NAME`');
  return r;
}

/** The region with this id (its id key), or null. */
export async function regionById(store: Store, id: number): Promise<RegionRecord | null> {
  const e = await getLive(store.regions, regionIdKey(id));
  return e ? decodeOrThrow<RegionRecord>(regionRecord, REGIONS_BUCKET, e) : null;
}

export async function getWorkspace(store: Store, name: string): Promise<{ record: WorkspaceRecord; revision: number } | null> {
  checkInput({ workspace: name });
  const e = await getLive(store.workspaces, workspaceNameKey(name));
  return e ? { record: decodeOrThrow<WorkspaceRecord>(workspaceRecord, WORKSPACES_BUCKET, e), revision: e.revision } : null;
}

export async function requireWorkspace(store: Store, name: string): Promise<{ record: WorkspaceRecord; revision: number }> {
  const w = await getWorkspace(store, name);
  if (!w) throw new StoreError('not-found', `unknown workspace ${JSON.stringify(name)}`, 'list workspaces with `i6pnctl workspace list` or create it with `i6pnctl workspace create NAME`');
  return w;
}

/** The workspace with this id, deleted ones included (their id key is kept, with `deletedAt`), or null. */
export async function workspaceById(store: Store, id: number): Promise<WorkspaceRecord | null> {
  const e = await getLive(store.workspaces, workspaceIdKey(id));
  return e ? decodeOrThrow<WorkspaceRecord>(workspaceRecord, WORKSPACES_BUCKET, e) : null;
}
