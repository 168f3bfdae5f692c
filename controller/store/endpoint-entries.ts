/**
 * Where an endpoint's entry lives, for every aggregate that reads or rewrites
 * endpoints. Endpoints live in one bucket per region (endpointsBucket(region),
 * keys `<workspace id>.<endpoint id>`), created when the region is added or on
 * first use, never for a region that is not registered. The store-wide name of
 * an endpoint stays `<region>.<workspace id>.<endpoint id>` (endpointKey):
 * claims point at it, and locateEndpointKey() says where its entry lives.
 *
 * The upgrade from the first layout (one `i6pn_endpoints` bucket, keys
 * `<region>.<ws>.<ep>`): while that bucket exists, every endpoint created or
 * removed is written to both layouts (agents of the old version read the old
 * bucket), reads see the union of both (the region bucket wins for a key in
 * both), and migrateEndpoints() (./migrate.ts) copies what the old bucket
 * holds into the region buckets, then, with `finish`, deletes it.
 */
import { type KV, type KvEntry } from '@nats-io/kv';
import {
  LEGACY_ENDPOINTS_BUCKET,
  endpointsBucket,
  locateEndpointKey,
  validateEndpointEntry,
  REGIONS_BUCKET,
  regionNameKey,
  regionRecord,
  type EndpointRecord,
} from '../../lib/schema.js';
import { regionIdHex } from '../../lib/address.js';
import { StoreError, type Store, type InvalidEntry, isConflict, isBucketGone, settleLimited, enc, getLive, keysOf, readNamed } from '../../lib/store.js';

/**
 * An operation on the first layout's bucket, which `migrate --finish` may
 * delete while another i6pnctl holds it open: then it did nothing and gives
 * `otherwise`. A deleted stream does not always say so (a publish to it
 * retries until its timeout, a delete reads "jetstream is not enabled"), so a
 * failure is settled by asking the server whether the bucket is still there.
 */
export async function ifLegacyExists<T>(store: Store, op: () => Promise<T>, otherwise: T): Promise<T> {
  try {
    return await op();
  } catch (e) {
    if (isBucketGone(e) || (await store.legacyEndpoints({ recheck: true })) === null) return otherwise;
    throw e;
  }
}

/** Where an endpoint entry lives: the real bucket and the key in it, and the endpoint's store-wide key. */
export interface EndpointRef {
  kv: KV;
  /** endpointsBucket(region), or LEGACY_ENDPOINTS_BUCKET. */
  bucket: string;
  /** The key in `bucket`: what `nats kv get BUCKET KEY` takes, and what InvalidEntry.key says. */
  key: string;
  /** `<region>.<workspace id>.<endpoint id>` (endpointKey): what claims point at and validateEndpointEntry takes. */
  logical: string;
}

export interface EndpointAt extends EndpointRef {
  entry: KvEntry;
}

/** A selection of endpoint keys: one region or every one, one workspace id (8 hex) or every one, one endpoint id (16 hex) or every one. */
export interface EndpointSelection {
  region?: string;
  workspace?: string;
  endpoint?: string;
}

/** One NATS filter for the selected keys (`>` selecting everything, so that a malformed key written by hand is read, and reported, too). */
export function selectionFilter(tokens: (string | undefined)[]): string {
  return tokens.every((t) => t === undefined) ? '>' : tokens.map((t) => t ?? '*').join('.');
}

/**
 * The keys of the selected endpoints: those of the region buckets (one, or
 * every one that exists), then, while the first layout's bucket exists, its
 * keys that no region bucket holds (the union of the layouts during an upgrade).
 */
export async function endpointRefs(store: Store, sel: EndpointSelection): Promise<EndpointRef[]> {
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
export async function endpointEntries(store: Store, sel: EndpointSelection): Promise<EndpointAt[]> {
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

export type ValidEndpoint = { at: EndpointAt; record: EndpointRecord; addr: Uint8Array };

/**
 * The entries as the agents judge them: validateEndpointEntry, and the
 * record's region id the one its region has in the regions bucket (an entry
 * of region R carrying another region's id, address bits and all, is
 * consistent in itself, but no agent of R applies it: reason region). An
 * invalid one is reported by its real bucket and key.
 */
export async function validateEndpoints(store: Pick<Store, 'regions'>, entries: EndpointAt[]): Promise<{ valid: ValidEndpoint[]; invalid: InvalidEntry[] }> {
  const valid: ValidEndpoint[] = [];
  const invalid: InvalidEntry[] = [];
  const regionIds = entries.length
    ? new Map((await readNamed(store.regions, REGIONS_BUCKET, regionRecord, regionNameKey)).records.map((r) => [r.name, r.id]))
    : new Map<string, number>();
  for (const at of entries) {
    const v = validateEndpointEntry(at.logical, at.entry.value);
    if (!v.ok) invalid.push({ bucket: at.bucket, key: at.key, reason: v.reason, message: v.message });
    else if (regionIds.get(v.record.region) !== v.record.regionId) {
      const registered = regionIds.get(v.record.region);
      invalid.push({
        bucket: at.bucket,
        key: at.key,
        reason: 'region',
        message: `region ${v.record.region} has id ${registered !== undefined ? regionIdHex(registered) : '(none: not registered)'}, the record says ${regionIdHex(v.record.regionId)}`,
      });
    } else valid.push({ at, record: v.record, addr: v.addr });
  }
  return { valid, invalid };
}

/** One endpoint's entries: in its region's bucket (`current`) and, while it exists, in the first layout's (`legacy`). */
export interface FoundEndpoint {
  logical: string;
  /** Its place in its region's bucket; null for a key that names no region. */
  place: { kv: KV; bucket: string; key: string } | null;
  current: EndpointAt | null;
  legacy: EndpointAt | null;
}

export async function findEndpoint(store: Store, logical: string): Promise<FoundEndpoint> {
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
export async function deleteEndpointEntries(store: Store, found: FoundEndpoint, what: string): Promise<void> {
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

/** Names and ranks change only in the per-region layout: refused while the first layout's bucket exists. */
export async function requireRegionLayout(store: Store, what: string): Promise<void> {
  if (await store.legacyEndpoints({ recheck: true })) {
    throw new StoreError('upgrade-pending', `${what} needs the per-region layout, and ${LEGACY_ENDPOINTS_BUCKET} still exists`, 'finish the upgrade first: i6pnctl migrate --finish');
  }
}

/** Rewrite a live endpoint entry (compare-and-set on the revision read); a change in between is StoreError 'conflict'. */
export async function rewriteEndpoint(store: Store, at: EndpointAt, record: EndpointRecord): Promise<void> {
  const check = validateEndpointEntry(at.logical, record);
  if (!check.ok) throw new StoreError('invalid', `endpoint would be invalid (${check.reason}: ${check.message})`, 'check the arguments');
  try {
    await at.kv.update(at.key, enc(record), at.entry.revision);
  } catch (e) {
    if (isConflict(e)) throw new StoreError('conflict', `endpoint ${record.address} changed meanwhile`, 'run the command again');
    throw e;
  }
}

export function sortEndpoints(list: EndpointRecord[]): EndpointRecord[] {
  return list.sort(
    (a, b) => a.region.localeCompare(b.region) || a.workspace.localeCompare(b.workspace) || a.node.localeCompare(b.node) || a.address.localeCompare(b.address),
  );
}
